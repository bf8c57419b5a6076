package backends

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	dto "github.com/prometheus/client_model/go"

	"github.com/latchbroker/latch/backends/vault"
	"github.com/latchbroker/latch/broker/brokertest"
)

// TestLatch_RunsWithREADMEPolicyOnly: the client every other test uses is
// logged in through AppRole with the README's latch policy and nothing
// else — no root, no default policy.
func TestLatch_RunsWithREADMEPolicyOnly(t *testing.T) {
	e := setup(t)
	info, err := e.LookupAccessor(t.Context(), e.latch.Accessor())
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := info.TokenPolicies(); !slices.Equal(p, []string{"latch"}) {
		t.Fatalf("latch's token policies %v, want exactly [latch]", p)
	}
	if path, _ := info.Data["path"].(string); path != "auth/approle/login" {
		t.Fatalf("latch's token came from %q, want auth/approle/login", path)
	}
	// And latch's own token reads no secret: only mint tokens do.
	_, err = e.latch.Read(t.Context(), "test.read", "database/creds/"+dbRole)
	if vault.StatusOf(err) != 403 {
		t.Fatalf("latch's own token reading database creds: %v, want 403", err)
	}
}

// TestClient_RenewsAndLogsInAgain runs latch's client on an AppRole whose
// tokens live 2s, renewable up to 5s, and keeps calling Vault for three
// max TTLs: Run renews with the LifetimeWatcher and logs in again whenever
// renewal ends, so no call fails.
func TestClient_RenewsAndLogsInAgain(t *testing.T) {
	e := setup(t)
	ctx := t.Context()
	if _, err := e.Root.Logical().WriteWithContext(ctx, "auth/approle/role/latch-short", map[string]any{
		"token_policies": "latch", "token_no_default_policy": true, "token_ttl": "2s", "token_max_ttl": "5s",
	}); err != nil {
		t.Fatal(err)
	}
	roleID, secretID, err := e.AppRoleFiles(ctx, "latch-short")
	if err != nil {
		t.Fatal(err)
	}
	c, err := vault.New(vault.Config{Address: st.Vault.Addr,
		Auth: vault.AuthConfig{Method: vault.AuthAppRole, RoleIDFile: roleID, SecretIDFile: secretID}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(ctx); err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = c.Run(runCtx); close(done) }()
	defer func() { stop(); <-done }()

	accessors := map[string]bool{c.Accessor(): true}
	end := time.Now().Add(15 * time.Second)
	for time.Now().Before(end) {
		if _, err := c.Read(ctx, "test.lookup-self", "auth/token/lookup-self"); err != nil {
			t.Fatalf("call failed %s into the test: %v", time.Until(end), err)
		}
		accessors[c.Accessor()] = true
		time.Sleep(250 * time.Millisecond)
	}
	if len(accessors) < 3 {
		t.Fatalf("saw %d tokens in 15s of 5s-max-TTL tokens; want re-logins", len(accessors))
	}
	t.Logf("%d tokens over 15s", len(accessors))
}

// TestClient_JWTLogin logs latch in with a JWT from its JWTSource, as it
// does with its own JWT-SVID.
func TestClient_JWTLogin(t *testing.T) {
	e := setup(t)
	ctx := t.Context()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Root.Sys().EnableAuthWithOptionsWithContext(ctx, "jwt", &vaultapi.EnableAuthOptions{Type: "jwt"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Root.Logical().WriteWithContext(ctx, "auth/jwt/config", map[string]any{
		"jwt_validation_pubkeys": []string{string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))},
	}); err != nil {
		t.Fatal(err)
	}
	const latchID = "spiffe://example.org/latch"
	if _, err := e.Root.Logical().WriteWithContext(ctx, "auth/jwt/role/latch", map[string]any{
		"role_type": "jwt", "user_claim": "sub", "bound_subject": latchID, "bound_audiences": "vault",
		"token_policies": "latch", "token_no_default_policy": true, "token_ttl": "1h",
	}); err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	source := func(context.Context) (string, error) {
		calls.Add(1)
		return signJWT(t, key, map[string]any{"sub": latchID, "aud": []string{"vault"},
			"iat": time.Now().Unix(), "exp": time.Now().Add(5 * time.Minute).Unix()}), nil
	}
	c, err := vault.New(vault.Config{Address: st.Vault.Addr, Auth: vault.AuthConfig{Method: vault.AuthJWT, Role: "latch", JWT: source}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(ctx); err != nil {
		t.Fatalf("JWT login: %v", err)
	}
	info, err := e.LookupAccessor(ctx, c.Accessor())
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := info.TokenPolicies(); !slices.Equal(p, []string{"latch"}) || calls.Load() != 1 {
		t.Fatalf("policies %v after %d JWT fetches", p, calls.Load())
	}

	// A JWT for another subject is refused, permanently.
	bad, _ := vault.New(vault.Config{Address: st.Vault.Addr, Auth: vault.AuthConfig{Method: vault.AuthJWT, Role: "latch",
		JWT: func(context.Context) (string, error) {
			return signJWT(t, key, map[string]any{"sub": "spiffe://example.org/agent/x", "aud": "vault", "exp": time.Now().Add(time.Minute).Unix()}), nil
		}}})
	if err := bad.Login(ctx); err == nil || vault.StatusOf(err) != 400 && vault.StatusOf(err) != 403 {
		t.Fatalf("login with a foreign subject = %v", err)
	}
}

// signJWT builds an ES256 JWT.
func signJWT(t *testing.T, key *ecdsa.PrivateKey, claims map[string]any) string {
	t.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	signing := enc(map[string]string{"alg": "ES256", "typ": "JWT"}) + "." + enc(claims)
	h := sha256.Sum256([]byte(signing))
	r, s, err := ecdsa.Sign(rand.Reader, key, h[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// TestClient_TokenFile logs in with a token file, as with Vault Agent.
func TestClient_TokenFile(t *testing.T) {
	e := setup(t)
	ctx := t.Context()
	s, err := e.Root.Logical().WriteWithContext(ctx, "auth/token/create-orphan", map[string]any{
		"policies": []string{"latch"}, "no_default_policy": true, "ttl": "1h", "renewable": true,
	})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte(s.Auth.ClientToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := vault.New(vault.Config{Address: st.Vault.Addr, Auth: vault.AuthConfig{Method: vault.AuthToken, TokenFile: file}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(ctx); err != nil {
		t.Fatal(err)
	}
	if c.Accessor() != s.Auth.Accessor {
		t.Fatalf("accessor %q, want %q", c.Accessor(), s.Auth.Accessor)
	}
	if _, err := c.Read(ctx, "test.lookup-self", "auth/token/lookup-self"); err != nil {
		t.Fatal(err)
	}
}

// TestClient_Metrics: every Vault call the backends made is in the
// latency histogram, by operation.
func TestClient_Metrics(t *testing.T) {
	e := setup(t)
	ctx := t.Context()
	req := request("close-ticket", time.Minute)
	req.Policy = ticketPolicy
	m, err := e.tokens.Mint(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.tokens.Revoke(ctx, m.Refs); err != nil {
		t.Fatal(err)
	}
	if err := e.tokens.DeletePolicy(ctx, m.Refs.Policy); err != nil {
		t.Fatal(err)
	}
	mfs, err := e.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]uint64{}
	for _, mf := range mfs {
		if mf.GetName() != "latch_vault_request_duration_seconds" || mf.GetType() != dto.MetricType_HISTOGRAM {
			continue
		}
		for _, m := range mf.GetMetric() {
			var op, outcome string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "op":
					op = l.GetValue()
				case "outcome":
					outcome = l.GetValue()
				}
			}
			seen[op+"/"+outcome] += m.GetHistogram().GetSampleCount()
		}
	}
	for _, want := range []string{"auth.login/ok", "policy.write/ok", "token.create/ok", "token.revoke-accessor/ok", "policy.delete/ok"} {
		if seen[want] == 0 {
			t.Errorf("no observation for %s in %v", want, seen)
		}
	}
	for k := range seen {
		if op, _, _ := strings.Cut(k, "/"); strings.Contains(op, "/") || strings.ContainsAny(op, "0123456789") {
			t.Errorf("operation label %q is not a fixed name", op)
		}
	}
}

// endRecorder is vault.Metrics that hands each VaultTokenEnd to the test.
type endRecorder struct{ ends chan time.Time }

func (endRecorder) ObserveVaultCall(string, string, time.Duration) {}
func (r endRecorder) VaultTokenEnd(at time.Time)                   { r.ends <- at }

// next waits for the next VaultTokenEnd.
func (r endRecorder) next(t *testing.T, what string) time.Time {
	t.Helper()
	select {
	case at := <-r.ends:
		return at
	case <-time.After(30 * time.Second):
		t.Fatalf("no VaultTokenEnd after %s", what)
		return time.Time{}
	}
}

// TestClient_TokenFileEnd: with a token file, latch tells in its metric
// and its log when its token ends for good — an explicit max TTL read at
// login, a max TTL met by a renewal — and picks up a new token written to
// the file while the old one still lives; a periodic token has no end.
func TestClient_TokenFileEnd(t *testing.T) {
	e := setup(t)
	ctx := t.Context()
	create := func(data map[string]any) *vaultapi.Secret {
		t.Helper()
		data["policies"], data["no_default_policy"] = []string{"latch"}, true
		s, err := e.Root.Logical().WriteWithContext(ctx, "auth/token/create-orphan", data)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	file := filepath.Join(t.TempDir(), "token")
	write := func(s *vaultapi.Secret) {
		t.Helper()
		if err := os.WriteFile(file, []byte(s.Auth.ClientToken+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	bounded := create(map[string]any{"ttl": "1h", "renewable": true, "explicit_max_ttl": "2h"})
	write(bounded)
	var logs brokertest.SyncBuffer
	m := endRecorder{ends: make(chan time.Time, 16)}
	c, err := vault.New(vault.Config{Address: st.Vault.Addr, Metrics: m, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		Auth: vault.AuthConfig{Method: vault.AuthToken, TokenFile: file, TokenFileCheck: 50 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(ctx); err != nil {
		t.Fatal(err)
	}
	if end := m.next(t, "login"); end.Before(time.Now().Add(2*time.Hour-time.Minute)) || end.After(time.Now().Add(2*time.Hour)) {
		t.Fatalf("end of a token with a 2h explicit max TTL: %s, want in 2h", end)
	}
	if !strings.Contains(logs.String(), "token_file before then") || strings.Contains(logs.String(), bounded.Auth.ClientToken) {
		t.Fatalf("the log does not warn of the end (or shows the token):\n%s", logs.String())
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = c.Run(runCtx); close(done) }()
	defer func() { stop(); <-done }()

	// A token whose end only its role's max TTL knows (an AppRole login
	// here): a renewal that comes back short tells.
	if _, err := e.Root.Logical().WriteWithContext(ctx, "auth/approle/role/latch-file", map[string]any{
		"token_policies": "latch", "token_no_default_policy": true, "token_ttl": "4s", "token_max_ttl": "5s",
	}); err != nil {
		t.Fatal(err)
	}
	roleID, err := e.Root.Logical().ReadWithContext(ctx, "auth/approle/role/latch-file/role-id")
	if err != nil {
		t.Fatal(err)
	}
	secretID, err := e.Root.Logical().WriteWithContext(ctx, "auth/approle/role/latch-file/secret-id", nil)
	if err != nil {
		t.Fatal(err)
	}
	capped, err := e.Root.Logical().WriteWithContext(ctx, "auth/approle/login", map[string]any{
		"role_id": roleID.Data["role_id"], "secret_id": secretID.Data["secret_id"],
	})
	if err != nil {
		t.Fatal(err)
	}
	write(capped)
	if end := m.next(t, "a new token in the file"); !end.IsZero() {
		t.Fatalf("a token with only its role's max TTL has end %s at login, want none known", end)
	}
	if c.Accessor() != capped.Auth.Accessor {
		t.Fatal("latch did not log in with the token written to its file")
	}
	end := m.next(t, "renewals up to the max TTL")
	if end.IsZero() || end.After(time.Now().Add(5*time.Second)) {
		t.Fatalf("end after a renewal met the max TTL: %s, want within 5s", end)
	}
	// Renewal ends; latch logs in again with the file's (same) token, and
	// keeps what the renewal told.
	if again := m.next(t, "the end of renewal"); !again.Equal(end) {
		t.Fatalf("end after logging in again with the same token: %s, want %s", again, end)
	}

	periodic := create(map[string]any{"period": "1h"})
	write(periodic)
	for {
		if end := m.next(t, "a periodic token in the file"); end.IsZero() && c.Accessor() == periodic.Auth.Accessor {
			break
		}
	}
}

// TestBackends_CheckREADMESetup: on Vault set up as the README says, every
// backend's Check (what latch doctor and the server's readiness run)
// finds nothing missing, and latch's own token has what it needs.
func TestBackends_CheckREADMESetup(t *testing.T) {
	e := setup(t)
	ctx := t.Context()
	own, err := e.latch.CheckOwn(ctx)
	if err != nil || len(own) > 0 {
		t.Fatalf("CheckOwn = %v, %v", own, err)
	}
	for _, tt := range []struct {
		name  string
		c     vault.Checker
		paths []string
	}{
		{"vault-token", e.tokens, nil},
		{"vault-lease", e.leases, []string{dbMount + "/creds/" + dbRole}},
		{"vault-lease/prefix only", e.leases, nil},
		{"vault-pki", e.certs, nil},
	} {
		probs, err := tt.c.Check(ctx, tt.name, time.Hour, tt.paths)
		if err != nil || len(probs) > 0 {
			t.Errorf("%s: Check = %v, %v", tt.name, probs, err)
		}
	}
	// A path latch_mint does not grant is named.
	probs, err := e.leases.Check(ctx, "app-db", time.Hour, []string{dbMount + "/creds/other"})
	if err != nil || len(probs) != 1 || !strings.Contains(probs[0].What, "lacks read on "+dbMount+"/creds/other") {
		t.Fatalf("Check of an ungranted path = %v, %v", probs, err)
	}
}
