package vaulttoken_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/latchbroker/latch/backends/vault"
	"github.com/latchbroker/latch/backends/vaulttoken"
	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/templates"
)

func newBackend(t *testing.T) *vaulttoken.Backend {
	t.Helper()
	c, err := vault.New(vault.Config{Address: "http://127.0.0.1:1", Auth: vault.AuthConfig{Method: vault.AuthToken, TokenFile: "/nonexistent"}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := vaulttoken.New(c, vaulttoken.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPolicyName(t *testing.T) {
	if got := vaulttoken.PolicyName("01JABCDEFGHJKMNPQRSTVWXYZ0"); got != "latch-01jabcdefghjkmnpqrstvwxyz0" {
		t.Fatalf("PolicyName = %q", got)
	}
}

func TestBackend_Prepare(t *testing.T) {
	b := newBackend(t)
	req := broker.MintRequest{LeaseID: "01JABCDEFGHJKMNPQRSTVWXYZ0", Agent: "spiffe://example.org/a", Task: "t", TTL: time.Minute,
		Policy: `path "secret/data/x" { capabilities = ["read"] }`}
	// No Vault call: the client points at a closed port.
	p, err := b.Prepare(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if p.Refs != (broker.Refs{Policy: "latch-01jabcdefghjkmnpqrstvwxyz0"}) || !p.Credential.IsZero() {
		t.Fatalf("Prepare = %+v", p)
	}
}

func TestBackend_Mint_RefusesRequests(t *testing.T) {
	b := newBackend(t)
	ok := broker.MintRequest{LeaseID: "01JABCDEFGHJKMNPQRSTVWXYZ0", Agent: "spiffe://example.org/a", Task: "t", TTL: time.Minute, Policy: "path \"x\" {}"}
	for name, edit := range map[string]func(*broker.MintRequest){
		"lease ID not a ULID": func(r *broker.MintRequest) { r.LeaseID = "../../sys" },
		"lease ID too long":   func(r *broker.MintRequest) { r.LeaseID = "01JABCDEFGHJKMNPQRSTVWXYZ0X" },
		"no policy":           func(r *broker.MintRequest) { r.Policy = " \n" },
		"no TTL":              func(r *broker.MintRequest) { r.TTL = 0 },
	} {
		req := ok
		edit(&req)
		if _, err := b.Mint(t.Context(), req); !errors.Is(err, broker.ErrInvalidMintRequest) {
			t.Errorf("%s: Mint = %v, want ErrInvalidMintRequest", name, err)
		}
	}
}

func TestBackend_Revoke_RefusesForeignPolicy(t *testing.T) {
	b := newBackend(t)
	err := b.Revoke(t.Context(), broker.Refs{Policy: "admin"})
	if err == nil || !strings.Contains(err.Error(), `refusing to delete policy "admin"`) {
		t.Fatalf("Revoke(admin policy) = %v", err)
	}
	if err := b.Revoke(t.Context(), broker.Refs{}); err == nil {
		t.Fatal("Revoke(empty refs) succeeded")
	}
}

func TestConfig_Validate(t *testing.T) {
	if err := (vaulttoken.Config{}).Validate(); err != nil {
		t.Fatal(err)
	}
	if err := (vaulttoken.Config{TokenRole: "bad/role"}).Validate(); err == nil || !strings.Contains(err.Error(), "token_role") {
		t.Fatalf("Validate = %v", err)
	}
}

func TestRenderCheck(t *testing.T) {
	for policy, ok := range map[string]bool{
		`path "secret/data/x" { capabilities = ["read"] }`: true,
		"":      false,
		" \n\t": false,
	} {
		err := vaulttoken.RenderCheck{}.CheckRendered(templates.Rendered{Policy: policy})
		if (err == nil) != ok {
			t.Errorf("CheckRendered(%q) = %v", policy, err)
		}
	}
}
