package backends

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/latchbroker/latch/backends/vault"
	"github.com/latchbroker/latch/backends/vaultlease"
	"github.com/latchbroker/latch/backends/vaultpki"
	"github.com/latchbroker/latch/backends/vaulttoken"
	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/promstats"
	"github.com/latchbroker/latch/integration/vaultenv"
)

// env is the Vault set up once for the package (vaultenv), and latch's
// client and backends on top of it.
type env struct {
	*vaultenv.Env
	latch   *vault.Client
	metrics *prometheus.Registry

	tokens *vaulttoken.Backend
	leases *vaultlease.Backend
	certs  *vaultpki.Backend
}

// setupOnce sets Vault up for the package, on first use.
var setupOnce = sync.OnceValues(func() (*env, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return newEnv(ctx)
})

// setup returns the shared env, building it on first use.
func setup(tb testing.TB) *env {
	tb.Helper()
	e, err := setupOnce()
	if err != nil {
		tb.Fatalf("set up Vault: %v", err)
	}
	return e
}

// Names the README's policy uses: the tests set Vault up to match it.
const (
	dbMount   = vaultenv.DBMount
	dbRole    = "report-eu" // database/creds/report-* in latch_mint
	pkiMount  = vaultenv.PKIMount
	pkiRole   = vaultenv.PKIRole
	kvTickets = "secret/data/tickets/"
)

func newEnv(ctx context.Context) (*env, error) {
	ve, err := vaultenv.Setup(ctx, st, vaultenv.Options{DBRoles: []string{dbRole}})
	if err != nil {
		return nil, err
	}
	e := &env{Env: ve}
	cfg := ve.Config()
	stats := promstats.New()
	e.metrics = stats.Registry()
	cfg.Metrics = stats
	if e.latch, err = ve.Login(ctx, cfg); err != nil {
		return nil, fmt.Errorf("latch login: %w", err)
	}
	if e.tokens, err = vaulttoken.New(e.latch, vaulttoken.Config{}); err != nil {
		return nil, err
	}
	if e.leases, err = vaultlease.New(e.latch, vaultlease.Config{Path: "database/creds/{{ .vars.role }}"}); err != nil {
		return nil, err
	}
	if e.certs, err = vaultpki.New(e.latch, vaultpki.Config{Mount: pkiMount, Role: pkiRole}); err != nil {
		return nil, err
	}
	return e, nil
}

// newLeaseID returns a fresh lease ULID.
func newLeaseID() string { return ulid.Make().String() }

// request is a MintRequest as the broker would build it.
func request(task string, ttl time.Duration) broker.MintRequest {
	return broker.MintRequest{
		LeaseID: newLeaseID(),
		Agent:   "spiffe://example.org/agent/test-bot",
		Task:    task,
		TTL:     ttl,
		MaxTTL:  ttl,
	}
}

// prepare does what the Service does before Mint: it asks a Preparer to
// prepare, or a Namer for the refs, into r.Prepared (what the intent holds).
func prepare(ctx context.Context, be broker.Backend, r *broker.MintRequest) error {
	var err error
	switch b := be.(type) {
	case broker.Preparer:
		r.Prepared, err = b.Prepare(ctx, *r)
	case broker.Namer:
		r.Prepared.Refs, err = b.Refs(ctx, *r)
	}
	return err
}

// clientWithToken is a Vault client acting as the agent holding token.
func (e *env) clientWithToken(tb testing.TB, token string) *vaultapi.Client {
	tb.Helper()
	c, err := e.ClientWithToken(token)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// pgRoleExists reports whether PostgreSQL has a role named name.
func (e *env) pgRoleExists(ctx context.Context, tb testing.TB, name string) bool {
	tb.Helper()
	ok, err := e.PGRoleExists(ctx, name)
	if err != nil {
		tb.Fatal(err)
	}
	return ok
}

// crlSerials returns the serials on the PKI mount's current CRL.
func (e *env) crlSerials(ctx context.Context, tb testing.TB) map[string]bool {
	tb.Helper()
	s, err := e.CRLSerials(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// serialHex turns Vault's "1a:2b:..." into big.Int hex as the CRL has it.
func serialHex(tb testing.TB, vaultSerial string) string {
	tb.Helper()
	s := vaultenv.SerialHex(vaultSerial)
	if s == "" {
		tb.Fatalf("bad serial %q", vaultSerial)
	}
	return s
}
