package catalog

import (
	"strings"

	"github.com/latchbroker/latch/backends/vault"
	"github.com/latchbroker/latch/backends/vaultlease"
	"github.com/latchbroker/latch/backends/vaultpki"
	"github.com/latchbroker/latch/backends/vaulttoken"
	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/templates"
	"github.com/latchbroker/latch/templates/strictyaml"
)

// BuiltIns lists every backend type latch can plug in: this is the one
// place to add one.
func BuiltIns() []Type {
	return []Type{
		{Name: vaulttoken.Type, Decode: decodeVaultToken},
		{Name: vaultlease.Type, Decode: decodeVaultLease},
		{Name: vaultpki.Type, Decode: decodeVaultPKI},
	}
}

func decodeVaultToken(path string, b Block) (Spec, error) {
	var c vaulttoken.Config
	if err := b.Decode(&c); err != nil {
		return Spec{}, err
	}
	if err := c.Validate(); err != nil {
		return Spec{}, b.At.Errorf("%s: %v", path, err)
	}
	return Spec{
		Template: templates.Backend{Type: vaulttoken.Type, Check: vaulttoken.RenderCheck{}},
		build:    func(v *vault.Client) (broker.Backend, error) { return vaulttoken.New(v, c) },
	}, nil
}

func decodeVaultLease(path string, b Block) (Spec, error) {
	var c struct {
		vaultlease.Config `yaml:",inline"`
		PathAt            strictyaml.Pos `yaml:"path,pos"`
	}
	if err := b.Decode(&c); err != nil {
		return Spec{}, err
	}
	if c.Path == "" {
		return Spec{}, b.At.Errorf("%s: path is required for a vault-lease backend, such as database/creds/{{ .vars.role }}", path)
	}
	if err := c.Config.Validate(); err != nil {
		return Spec{}, b.At.Errorf("%s: %v", path, err)
	}
	return Spec{
		Template: templates.Backend{Type: vaultlease.Type, Path: c.Path, PathAt: c.PathAt, Check: c.Config.RenderCheck()},
		build:    func(v *vault.Client) (broker.Backend, error) { return vaultlease.New(v, c.Config) },
	}, nil
}

func decodeVaultPKI(path string, b Block) (Spec, error) {
	var c vaultpki.Config
	if err := b.Decode(&c); err != nil {
		return Spec{}, err
	}
	var missing []string
	if c.Mount == "" {
		missing = append(missing, "mount")
	}
	if c.Role == "" {
		missing = append(missing, "role")
	}
	if len(missing) > 0 {
		return Spec{}, b.At.Errorf("%s: a vault-pki backend needs %s", path, strings.Join(missing, " and "))
	}
	if err := c.Validate(); err != nil {
		return Spec{}, b.At.Errorf("%s: %v", path, err)
	}
	return Spec{
		Template: templates.Backend{Type: vaultpki.Type, Check: vaultpki.RenderCheck{}},
		build:    func(v *vault.Client) (broker.Backend, error) { return vaultpki.New(v, c) },
	}, nil
}
