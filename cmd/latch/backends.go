package main

import (
	"fmt"
	"strings"

	"github.com/latchbroker/latch/backends/vault"
	"github.com/latchbroker/latch/backends/vaultlease"
	"github.com/latchbroker/latch/backends/vaultpki"
	"github.com/latchbroker/latch/backends/vaulttoken"
	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/templates"
	"github.com/latchbroker/latch/templates/strictyaml"
)

// backendBuilder builds one configured backend over latch's Vault client.
type backendBuilder func(*vault.Client) (broker.Backend, error)

// backendType decodes and checks one backends: entry of its type. It
// returns what templates needs to validate the templates that use it, and
// the builder the server calls once it has a Vault client.
type backendType func(path string, b BackendConfig) (templates.Backend, backendBuilder, error)

// builtinBackends lists every backend type latch can plug in: this is the
// one place to add one. Each decodes its own keys strictly, into the
// backend package's own Config.
var builtinBackends = map[string]backendType{
	templates.BackendVaultToken: func(path string, b BackendConfig) (templates.Backend, backendBuilder, error) {
		var c vaulttoken.Config
		if err := b.Decode(&c); err != nil {
			return templates.Backend{}, nil, err
		}
		if err := c.Validate(); err != nil {
			return templates.Backend{}, nil, b.At.Errorf("%s: %v", path, err)
		}
		return templates.Backend{Type: b.Type}, func(v *vault.Client) (broker.Backend, error) { return vaulttoken.New(v, c) }, nil
	},
	templates.BackendVaultLease: func(path string, b BackendConfig) (templates.Backend, backendBuilder, error) {
		var c struct {
			vaultlease.Config `yaml:",inline"`
			PathAt            strictyaml.Pos `yaml:"path,pos"`
		}
		if err := b.Decode(&c); err != nil {
			return templates.Backend{}, nil, err
		}
		if c.Path == "" {
			return templates.Backend{}, nil, b.At.Errorf("%s: path is required for a vault-lease backend, such as database/creds/{{ .vars.role }}", path)
		}
		if err := c.Config.Validate(); err != nil {
			return templates.Backend{}, nil, b.At.Errorf("%s: %v", path, err)
		}
		return templates.Backend{Type: b.Type, Path: c.Path, PathAt: c.PathAt},
			func(v *vault.Client) (broker.Backend, error) { return vaultlease.New(v, c.Config) }, nil
	},
	templates.BackendVaultPKI: func(path string, b BackendConfig) (templates.Backend, backendBuilder, error) {
		var c vaultpki.Config
		if err := b.Decode(&c); err != nil {
			return templates.Backend{}, nil, err
		}
		var missing []string
		if c.Mount == "" {
			missing = append(missing, "mount")
		}
		if c.Role == "" {
			missing = append(missing, "role")
		}
		if len(missing) > 0 {
			return templates.Backend{}, nil, b.At.Errorf("%s: a vault-pki backend needs %s", path, strings.Join(missing, " and "))
		}
		if err := c.Validate(); err != nil {
			return templates.Backend{}, nil, b.At.Errorf("%s: %v", path, err)
		}
		return templates.Backend{Type: b.Type}, func(v *vault.Client) (broker.Backend, error) { return vaultpki.New(v, c) }, nil
	},
}

// buildBackends builds every configured backend over v.
func (cfg *Config) buildBackends(v *vault.Client) (map[string]broker.Backend, error) {
	out := make(map[string]broker.Backend, len(cfg.backends))
	for name, build := range cfg.backends {
		b, err := build(v)
		if err != nil {
			return nil, fmt.Errorf("backend %s: %w", name, err)
		}
		out[name] = b
	}
	return out, nil
}
