package vaulttoken_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/latchbroker/latch/backends/vault"
	"github.com/latchbroker/latch/backends/vaulttoken"
	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/brokertest"
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

func TestSharedPolicyName(t *testing.T) {
	a, b := vaulttoken.SharedPolicyName("prod", `path "x" {}`), vaulttoken.SharedPolicyName("prod", `path "y" {}`)
	if a != vaulttoken.SharedPolicyName("prod", `path "x" {}`) || a == b || !strings.HasPrefix(a, "latch-p-") || len(a) != len("latch-p-")+8+1+32 || strings.ToLower(a) != a {
		t.Fatalf("SharedPolicyName = %q, %q: want one lower-case name per text", a, b)
	}
	// Another installation sharing the Vault has names of its own.
	if other := vaulttoken.SharedPolicyName("staging", `path "x" {}`); other[:17] == a[:17] {
		t.Fatalf("two owners share the prefix %q", a[:17])
	}
}

func TestBackend_Refs(t *testing.T) {
	b := newBackend(t)
	req := broker.MintRequest{LeaseID: "01JABCDEFGHJKMNPQRSTVWXYZ0", Agent: "spiffe://example.org/a", Task: "t", TTL: time.Minute,
		Policy: `path "secret/data/x" { capabilities = ["read"] }`}
	// A bad request is refused before any Vault call (the client points
	// at a closed port).
	bad := req
	bad.LeaseID = "../x"
	if _, err := b.Refs(t.Context(), bad); !errors.Is(err, broker.ErrInvalidMintRequest) {
		t.Fatalf("Refs(bad lease ID) = %v, want ErrInvalidMintRequest", err)
	}
	// A crashed mint's refs: nothing to revoke alone, the token expires
	// with its group or at its TTL.
	refs := broker.Refs{Policy: vaulttoken.SharedPolicyName("", req.Policy), Group: "accessor-of-the-parent"}
	if err := b.Revoke(t.Context(), refs); !errors.Is(err, broker.ErrExpiresOnItsOwn) {
		t.Fatalf("Revoke(policy only) = %v, want ErrExpiresOnItsOwn", err)
	}
	if err := b.DeletePolicy(t.Context(), "latch-01jabcdefghjkmnpqrstvwxyz0"); err == nil {
		t.Fatal("DeletePolicy collected a per-lease policy")
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

// TestBackend_Mint_SharedPolicyOnceGroupsRotate: a shared policy is
// written once, then trusted for WrittenFor, then written again, so that
// one deleted behind latch's back comes back within that bound; a
// collected one is written at the next Mint. Tokens are created by their
// group's parent, which is rotated after GroupFor.
func TestBackend_Mint_SharedPolicyOnceGroupsRotate(t *testing.T) {
	var writes, creates, parents atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/v1/auth/token/lookup-self":
			fmt.Fprint(w, `{"data":{"accessor":"acc-latch","ttl":0,"renewable":false}}`)
		case strings.HasPrefix(r.URL.Path, "/v1/sys/policies/acl/latch-p-") && r.Method == http.MethodPut:
			writes.Add(1)
			w.WriteHeader(http.StatusNoContent)
		case strings.HasPrefix(r.URL.Path, "/v1/sys/policies/acl/latch-p-") && r.Method == http.MethodDelete:
			w.WriteHeader(http.StatusNoContent)
		case r.URL.Path == "/v1/auth/token/create/latch-group":
			var body struct{ TTL string }
			_ = json.NewDecoder(r.Body).Decode(&body)
			ttl, _ := time.ParseDuration(body.TTL)
			n := parents.Add(1)
			fmt.Fprintf(w, `{"auth":{"client_token":"hvs.parent%d","accessor":"parent%d","policies":["latch_group"],"lease_duration":%d}}`,
				n, n, int(ttl.Seconds()))
		case r.URL.Path == "/v1/auth/token/create/latch-token":
			var body struct{ Policies []string }
			_ = json.NewDecoder(r.Body).Decode(&body)
			if !strings.HasPrefix(r.Header.Get("X-Vault-Token"), "hvs.parent") {
				http.Error(w, "a token not created by a group parent", http.StatusForbidden)
				return
			}
			n := creates.Add(1)
			fmt.Fprintf(w, `{"auth":{"client_token":"hvs.t%d","accessor":"acc%d","policies":%q,"token_policies":%q,"lease_duration":60,"renewable":false}}`, n, n, body.Policies, body.Policies)
		default:
			http.Error(w, r.Method+" "+r.URL.Path, http.StatusNotFound)
		}
	}))
	defer srv.Close()
	clk := brokertest.NewClock(time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC))
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("good-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := vault.New(vault.Config{Address: srv.URL, Now: clk.Now, Owner: "test", Auth: vault.AuthConfig{Method: vault.AuthToken, TokenFile: tokenFile}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(t.Context()); err != nil {
		t.Fatal(err)
	}
	b, err := vaulttoken.New(c, vaulttoken.Config{})
	if err != nil {
		t.Fatal(err)
	}
	req := broker.MintRequest{LeaseID: "01JABCDEFGHJKMNPQRSTVWXYZ0", Agent: "spiffe://example.org/a", Task: "t", TTL: time.Hour, Policy: `path "x" { capabilities = ["read"] }`}
	mint := func() broker.Minted {
		t.Helper()
		m, err := b.Mint(t.Context(), req)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	mint()
	mint()
	if writes.Load() != 1 || creates.Load() != 2 {
		t.Fatalf("two mints of one policy: %d policy writes, %d tokens; want 1, 2", writes.Load(), creates.Load())
	}
	clk.Add(vaulttoken.WrittenFor)
	mint()
	if writes.Load() != 2 {
		t.Fatalf("a mint past WrittenFor wrote the policy %d times in all, want 2", writes.Load())
	}
	if err := b.DeletePolicy(t.Context(), vaulttoken.SharedPolicyName("test", req.Policy)); err != nil {
		t.Fatal(err)
	}
	mint()
	if writes.Load() != 3 {
		t.Fatalf("a mint after the collection wrote the policy %d times in all, want 3", writes.Load())
	}

	// Every token so far is a child of one group parent; the group takes
	// tokens for GroupFor, then a new parent is created; a forgotten
	// group takes none.
	if parents.Load() != 1 {
		t.Fatalf("%d group parents for one agent's tokens of one task, want 1", parents.Load())
	}
	clk.Add(vault.GroupFor)
	if m := mint(); m.Refs.Group != "parent2" || parents.Load() != 2 {
		t.Fatalf("a mint past GroupFor: group %q, %d parents; want parent2, 2", m.Refs.Group, parents.Load())
	}
	b.ForgetGroup("parent2")
	if m := mint(); m.Refs.Group != "parent3" {
		t.Fatalf("a mint after ForgetGroup: group %q, want parent3", m.Refs.Group)
	}
}
