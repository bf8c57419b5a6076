package catalog_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/latchbroker/latch/backends/catalog"
	"github.com/latchbroker/latch/backends/vault"
	"github.com/latchbroker/latch/backends/vaultlease"
	"github.com/latchbroker/latch/backends/vaultpki"
	"github.com/latchbroker/latch/backends/vaulttoken"
	"github.com/latchbroker/latch/templates"
	"github.com/latchbroker/latch/templates/strictyaml"
)

const threeYAML = `backends:
  tokens: { type: vault-token }
  app-db: { type: vault-lease, path: "database/creds/{{ .vars.role }}" }
  certs:  { type: vault-pki, mount: pki, role: agents, token_role: latch-mint }
`

// TestBuiltIns: every backend package's Type is listed, once.
func TestBuiltIns(t *testing.T) {
	var names []string
	for _, b := range catalog.BuiltIns() {
		if b.Decode == nil {
			t.Errorf("%s: no Decode", b.Name)
		}
		names = append(names, b.Name)
	}
	slices.Sort(names)
	want := []string{vaultlease.Type, vaultpki.Type, vaulttoken.Type}
	if !slices.Equal(names, want) {
		t.Fatalf("BuiltIns = %v, want %v", names, want)
	}
}

// TestParse decodes one block of each type and builds them over a Vault
// client (no Vault call is made to build).
func TestParse(t *testing.T) {
	set, err := catalog.Parse("latch.yaml", []byte(threeYAML))
	if err != nil {
		t.Fatal(err)
	}
	got := set.Templates()
	want := map[string]templates.Backend{
		"tokens": {Type: vaulttoken.Type, Check: vaulttoken.RenderCheck{}},
		"app-db": {Type: vaultlease.Type, Path: "database/creds/{{ .vars.role }}",
			PathAt: strictyaml.Pos{File: "latch.yaml", Line: 3, Col: 38},
			Check:  vaultlease.RenderCheck{Prefix: "database/creds/", Segments: 3}},
		"certs": {Type: vaultpki.Type, Check: vaultpki.RenderCheck{}},
	}
	if len(got) != len(want) {
		t.Fatalf("Templates() = %+v", got)
	}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("Templates()[%s] = %+v, want %+v", name, got[name], w)
		}
	}

	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("s.test\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	vc, err := vault.New(vault.Config{Address: "http://127.0.0.1:1", Auth: vault.AuthConfig{Method: vault.AuthToken, TokenFile: tokenFile}})
	if err != nil {
		t.Fatal(err)
	}
	defer vc.Close()
	bs, err := set.Build(vc)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := bs["tokens"].(*vaulttoken.Backend); !ok {
		t.Errorf("tokens is %T", bs["tokens"])
	}
	if _, ok := bs["app-db"].(*vaultlease.Backend); !ok {
		t.Errorf("app-db is %T", bs["app-db"])
	}
	if _, ok := bs["certs"].(*vaultpki.Backend); !ok {
		t.Errorf("certs is %T", bs["certs"])
	}
	if _, err := set.Build(nil); err == nil || !strings.Contains(err.Error(), "no Vault client") {
		t.Errorf("Build(nil) = %v, want the backend's own no-client error", err)
	}
}

// TestDecode_Errors: every problem of a section is reported, one line each,
// naming file:line:col and the key; a block of a known type stays in the set
// (with only its type) when its own keys are bad.
func TestDecode_Errors(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		want       []string
		kept       map[string]templates.Backend
	}{
		{"unknown key", "backends:\n  tokens: { type: vault-token, ttl: 5m }\n", []string{
			`latch.yaml:2:32: unknown key "ttl" in backends.tokens; allowed: token_role, group_role`,
		}, map[string]templates.Backend{"tokens": {Type: vaulttoken.Type}}},
		{"bad token role", "backends:\n  tokens: { type: vault-token, token_role: ../root }\n", []string{
			`latch.yaml:2:3: backends.tokens: vaulttoken: token_role: "../root" is not a valid Vault name (letters, digits, and - _ . inside)`,
		}, map[string]templates.Backend{"tokens": {Type: vaulttoken.Type}}},
		{"no type", "backends:\n  tokens: { token_role: x }\n", []string{
			`latch.yaml:2:3: backends.tokens: type is required; allowed: vault-lease, vault-pki, vault-token`,
		}, map[string]templates.Backend{}},
		{"unknown type", "backends:\n  kv: { type: vault-kv }\n", []string{
			`latch.yaml:2:15: backends.kv.type: unknown backend type "vault-kv"; allowed: vault-lease, vault-pki, vault-token`,
		}, map[string]templates.Backend{}},
		{"bad name", "backends:\n  App_DB: { type: vault-token }\n", []string{
			`latch.yaml:2:3: backends.App_DB: backend names are lowercase letters, digits and -`,
		}, map[string]templates.Backend{}},
		{"lease without path", "backends:\n  app-db: { type: vault-lease }\n", []string{
			`latch.yaml:2:3: backends.app-db: path is required for a vault-lease backend, such as database/creds/{{ .vars.role }}`,
		}, map[string]templates.Backend{"app-db": {Type: vaultlease.Type}}},
		{"lease on sys", "backends:\n  app-db: { type: vault-lease, path: sys/leases }\n", []string{
			`latch.yaml:2:3: backends.app-db: vaultlease: path "sys/leases" is not a secrets engine path`,
		}, map[string]templates.Backend{"app-db": {Type: vaultlease.Type}}},
		{"pki without mount and role", "backends:\n  certs: { type: vault-pki }\n", []string{
			`latch.yaml:2:3: backends.certs: a vault-pki backend needs mount and role`,
		}, map[string]templates.Backend{"certs": {Type: vaultpki.Type}}},
		{"all at once", "backends:\n  certs: { type: vault-pki, role: agents }\n  kv: { type: vault-kv }\n  tokens: {}\n", []string{
			`latch.yaml:2:3: backends.certs: a vault-pki backend needs mount`,
			`latch.yaml:3:15: backends.kv.type: unknown backend type "vault-kv"; allowed: vault-lease, vault-pki, vault-token`,
			`latch.yaml:4:3: backends.tokens: type is required; allowed: vault-lease, vault-pki, vault-token`,
		}, map[string]templates.Backend{"certs": {Type: vaultpki.Type}}},
		{"not only backends", "backends: {}\nvault: {}\n", []string{
			`latch.yaml:2:1: unknown key "vault"; allowed: backends`,
		}, map[string]templates.Backend{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set, err := catalog.Parse("latch.yaml", []byte(tc.yaml))
			if err == nil {
				t.Fatal("no error")
			}
			if got := strings.Split(err.Error(), "\n"); !slices.Equal(got, tc.want) {
				t.Fatalf("errors:\n%s\nwant:\n%s", err, strings.Join(tc.want, "\n"))
			}
			got := set.Templates()
			if len(got) != len(tc.kept) {
				t.Fatalf("kept %+v, want %+v", got, tc.kept)
			}
			for name, w := range tc.kept {
				if got[name] != w {
					t.Errorf("kept[%s] = %+v, want %+v", name, got[name], w)
				}
				if _, err := set[name].Build(nil); err == nil || !strings.Contains(err.Error(), "was not decoded") {
					t.Errorf("Build of a bad block = %v", err)
				}
			}
		})
	}
}

// TestParse_Syntax: a document that does not parse yields only the syntax
// error, and no set.
func TestParse_Syntax(t *testing.T) {
	set, err := catalog.Parse("latch.yaml", []byte("backends: [\n"))
	if err == nil || set != nil {
		t.Fatalf("Parse = %v, %v", set, err)
	}
	if !strings.HasPrefix(err.Error(), "latch.yaml:") {
		t.Fatalf("error does not name the file: %v", err)
	}
}
