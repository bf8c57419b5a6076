package vaultpki_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/latchbroker/latch/backends/vault"
	"github.com/latchbroker/latch/backends/vaultpki"
	"github.com/latchbroker/latch/broker"
)

func TestConfig_Validate(t *testing.T) {
	tests := []struct {
		name string
		cfg  vaultpki.Config
		want string
	}{
		{"Valid", vaultpki.Config{Mount: "pki", Role: "agents"}, ""},
		{"NestedMount", vaultpki.Config{Mount: "pki/int", Role: "agents", TokenRole: "latch-mint"}, ""},
		{"ErrMissing", vaultpki.Config{}, "mount is required, such as pki\nvaultpki: role is required"},
		{"ErrBadMount", vaultpki.Config{Mount: "../sys", Role: "r"}, "not a valid mount path"},
		{"ErrBadRole", vaultpki.Config{Mount: "pki", Role: "a/b"}, "role: \"a/b\" is not a valid Vault name"},
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

func TestBackend_Mint_RefusesNames(t *testing.T) {
	c, err := vault.New(vault.Config{Address: "http://127.0.0.1:1", Auth: vault.AuthConfig{Method: vault.AuthToken, TokenFile: "/nonexistent"}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := vaultpki.New(c, vaultpki.Config{Mount: "pki", Role: "agents"})
	if err != nil {
		t.Fatal(err)
	}
	base := broker.MintRequest{LeaseID: "01JAAAAAAAAAAAAAAAAAAAAAAA", Agent: "spiffe://example.org/a", Task: "t", TTL: time.Minute}
	for name, names := range map[string]broker.CertNames{
		"no common name":    {},
		"comma in CN":       {CommonName: "a.example.org,evil.example.com"},
		"comma in alt name": {CommonName: "a.example.org", AltNames: []string{"b,c"}},
		"empty URI SAN":     {CommonName: "a.example.org", URISANs: []string{""}},
		"RLO in CN":         {CommonName: "a\u202Eb.example.org"},
		"not a DNS name":    {CommonName: "a.example.org", AltNames: []string{"a/b"}},
	} {
		req := base
		req.Names = names
		if _, err := b.Mint(t.Context(), req); !errors.Is(err, broker.ErrInvalidMintRequest) {
			t.Errorf("%s: Mint = %v, want ErrInvalidMintRequest", name, err)
		}
	}
}
