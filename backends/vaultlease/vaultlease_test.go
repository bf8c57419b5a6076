package vaultlease_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/latchbroker/latch/backends/vault"
	"github.com/latchbroker/latch/backends/vaultlease"
	"github.com/latchbroker/latch/broker"
)

func TestConfig_Validate(t *testing.T) {
	tests := []struct {
		name string
		cfg  vaultlease.Config
		want string
	}{
		{"Template", vaultlease.Config{Path: "database/creds/{{ .vars.role }}"}, ""},
		{"Fixed", vaultlease.Config{Path: "aws/creds/deploy"}, ""},
		{"TokenRole", vaultlease.Config{Path: "aws/creds/{{ .vars.r }}", TokenRole: "latch-mint2"}, ""},
		{"ErrNoPath", vaultlease.Config{}, "path is required"},
		{"ErrNoFixedPrefix", vaultlease.Config{Path: "{{ .vars.path }}"}, "must start with a fixed engine path"},
		{"ErrLeadingSlash", vaultlease.Config{Path: "/database/creds/{{ .vars.role }}"}, "must not start with /"},
		{"ErrSys", vaultlease.Config{Path: "sys/leases/{{ .vars.x }}"}, "not a secrets engine path"},
		{"ErrAuth", vaultlease.Config{Path: "auth/token/create"}, "not a secrets engine path"},
		{"ErrDotDot", vaultlease.Config{Path: "database/../sys/x"}, "not a clean Vault path"},
		{"ErrTokenRole", vaultlease.Config{Path: "a/b", TokenRole: "bad role"}, "token_role"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestConfig_Prefix(t *testing.T) {
	for path, want := range map[string]string{
		"database/creds/{{ .vars.role }}":        "database/creds/",
		"aws/creds/deploy-{{ .params.service }}": "aws/creds/",
		"aws/creds/deploy":                       "aws/creds/deploy",
	} {
		if got := (vaultlease.Config{Path: path}).Prefix(); got != want {
			t.Errorf("Prefix(%q) = %q, want %q", path, got, want)
		}
	}
}

// TestBackend_Mint_RefusesPaths checks rendered paths before any Vault call
// (the client points nowhere and has never logged in).
func TestBackend_Mint_RefusesPaths(t *testing.T) {
	c, err := vault.New(vault.Config{Address: "http://127.0.0.1:1", Auth: vault.AuthConfig{Method: vault.AuthToken, TokenFile: "/nonexistent"}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := vaultlease.New(c, vaultlease.Config{Path: "database/creds/{{ .vars.role }}"})
	if err != nil {
		t.Fatal(err)
	}
	req := broker.MintRequest{LeaseID: "01JAAAAAAAAAAAAAAAAAAAAAAA", Agent: "spiffe://example.org/a", Task: "t", TTL: time.Minute}
	for _, p := range []string{"", "database/creds/", "database/creds/../../sys/policies/acl/x", "aws/creds/x", "database/credsx/y", "database/creds/a?b", "/database/creds/a",
		"database/creds/eu/extra/segments", "database/creds/a\u202Eb"} {
		req.Path = p
		_, err := b.Mint(t.Context(), req)
		if !errors.Is(err, broker.ErrInvalidMintRequest) {
			t.Errorf("Mint(path %q) = %v, want ErrInvalidMintRequest", p, err)
		}
		if _, err := b.Refs(t.Context(), req); !errors.Is(err, broker.ErrInvalidMintRequest) {
			t.Errorf("Refs(path %q) = %v, want ErrInvalidMintRequest", p, err)
		}
	}
}
