package backends

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/integration/vaultenv"
)

func leaseRequest(ttl time.Duration) broker.MintRequest {
	req := request("nightly-report", ttl)
	req.Vars = map[string]string{"role": dbRole}
	req.Path = "database/creds/" + dbRole
	return req
}

func TestVaultLease_DatabaseCredentials(t *testing.T) {
	e := setup(t)
	ctx := t.Context()
	req := leaseRequest(10 * time.Minute)
	if err := prepare(ctx, e.leases, &req); err != nil {
		t.Fatal(err)
	}
	if req.Prepared.Refs.Group == "" {
		t.Fatalf("Refs = %+v, want the group's mint token", req.Prepared.Refs)
	}
	before := time.Now()
	m, err := e.leases.Mint(ctx, req)
	if err != nil {
		t.Fatalf("Mint: %v", err)
	}
	if !strings.HasPrefix(m.Refs.VaultLeaseID, "database/creds/"+dbRole+"/") || m.Refs.Group != req.Prepared.Refs.Group || m.Refs.MintAccessor != "" {
		t.Fatalf("refs %+v", m.Refs)
	}
	// The role's TTL is an hour; the lease's 10 minutes win.
	if lo, hi := before.Add(req.TTL-5*time.Second), time.Now().Add(req.TTL); m.ExpiresAt.Before(lo) || m.ExpiresAt.After(hi) {
		t.Errorf("ExpiresAt now + %s, want %s", time.Until(m.ExpiresAt).Round(time.Second), req.TTL)
	}
	if keys := m.Secret.Keys(); !slices.Equal(keys, []string{"password", "username"}) {
		t.Fatalf("secret fields %v", keys)
	}
	creds := m.Secret.Reveal()
	user := creds["username"]

	who, err := e.PGLogin(ctx, user, creds["password"])
	if err != nil || who != user {
		t.Fatalf("log in with the credentials: %q, %v", who, err)
	}
	if !e.pgRoleExists(ctx, t, user) {
		t.Fatalf("role %s not in pg_roles", user)
	}

	// The group's mint token: latch_mint only, orphan, bounded by the
	// lease TTL and the group's two margins.
	info, err := e.LookupAccessor(ctx, m.Refs.Group)
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := info.TokenPolicies(); !slices.Equal(p, []string{"latch_mint"}) {
		t.Errorf("mint token policies %v, want [latch_mint]", p)
	}
	if ttl, _ := info.TokenTTL(); ttl > req.TTL+2*time.Minute {
		t.Errorf("mint token TTL %s beyond the lease TTL and two minutes", ttl)
	}
	if info.Data["orphan"] != true {
		t.Error("mint token is not an orphan: latch re-logging in would revoke it")
	}

	if alive, err := e.leases.Lookup(ctx, m.Refs); err != nil || !alive {
		t.Fatalf("Lookup = %v, %v", alive, err)
	}
	if err := e.leases.Revoke(ctx, m.Refs); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	// Revoke is synchronous: the role is gone when it returns.
	if e.pgRoleExists(ctx, t, user) {
		t.Errorf("role %s still in pg_roles after Revoke", user)
	}
	if _, err := e.PGLogin(ctx, user, creds["password"]); err == nil {
		t.Error("login works after Revoke")
	}
	if alive, err := e.leases.Lookup(ctx, m.Refs); err != nil || alive {
		t.Fatalf("Lookup after revoke = %v, %v", alive, err)
	}
	if err := e.leases.Revoke(ctx, m.Refs); err != nil {
		t.Fatalf("second Revoke: %v, want idempotent", err)
	}
}

// TestVaultLease_LatchTTLWinsOverRoleTTL: with latch doing nothing at all,
// Vault revokes the credentials when the group's mint token expires, at
// the lease TTL and the group's margins (a quarter of the TTL each, for
// a short one), although the database role's TTL is an hour.
func TestVaultLease_LatchTTLWinsOverRoleTTL(t *testing.T) {
	e := setup(t)
	ctx := t.Context()
	m, err := e.leases.Mint(ctx, leaseRequest(3*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	user := m.Secret.Reveal()["username"]
	if !e.pgRoleExists(ctx, t, user) {
		t.Fatal("role missing right after Mint")
	}
	start := time.Now()
	vaultenv.Eventually(t, 30*time.Second, func() error {
		if e.pgRoleExists(ctx, t, user) {
			return errors.New("database role still exists long after the lease TTL")
		}
		return nil
	})
	t.Logf("role dropped %s after a 3s lease (role TTL 1h)", time.Since(start).Round(100*time.Millisecond))
}

func TestVaultLease_Renew(t *testing.T) {
	e := setup(t)
	ctx := t.Context()
	req := leaseRequest(30 * time.Second)
	req.MaxTTL, req.Renewable = 2*time.Minute, true
	m, err := e.leases.Mint(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	defer e.leases.Revoke(ctx, m.Refs)
	if !m.Renewable {
		t.Fatal("not renewable")
	}
	exp, err := e.leases.Renew(ctx, m.Refs, time.Minute)
	if err != nil {
		t.Fatalf("Renew: %v", err)
	}
	if d := time.Until(exp); d < 50*time.Second || d > time.Minute {
		t.Errorf("renewed until now + %s, want 1m", d)
	}
	exp, err = e.leases.Renew(ctx, m.Refs, time.Hour)
	if err != nil {
		t.Fatalf("Renew: %v", err)
	}
	// The Service asks for no more than the lease's max TTL (broker's
	// tests); here the backend is asked for an hour, and the ceiling is the
	// group's mint token: the max TTL and its two quarters.
	if d := time.Until(exp); d > req.MaxTTL+req.MaxTTL/2 {
		t.Errorf("renewed until now + %s, past the group's mint token", d)
	}
}

// TestVaultLease_DeniedPathFails: a path the mint policy does not allow
// fails permanently, and leaves nothing of the lease behind.
func TestVaultLease_DeniedPathFails(t *testing.T) {
	e := setup(t)
	ctx := t.Context()
	req := leaseRequest(time.Minute)
	req.Path = "database/creds/admin"
	if err := prepare(ctx, e.leases, &req); err != nil {
		t.Fatal(err)
	}
	_, err := e.leases.Mint(ctx, req)
	if err == nil || errors.Is(err, broker.ErrBackendUnavailable) || !strings.Contains(err.Error(), "403") {
		t.Fatalf("Mint of a denied path = %v, want a permanent 403", err)
	}
	if alive, err := e.leases.Lookup(ctx, req.Prepared.Refs); err != nil || alive {
		t.Fatalf("after a failed Mint: alive %v, %v", alive, err)
	}
}
