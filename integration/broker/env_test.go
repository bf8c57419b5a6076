package broker

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/latchbroker/latch/backends/catalog"
	"github.com/latchbroker/latch/backends/vault"
	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/integration/vaultenv"
	"github.com/latchbroker/latch/templates"
)

// Names the README's policy uses; the tests set Vault up to match it.
const (
	dbMount  = vaultenv.DBMount
	pkiMount = vaultenv.PKIMount
	pkiRole  = vaultenv.PKIRole
	// Database roles report-a ... report-m: latch_mint may read
	// database/creds/report-*. Each test uses its own role, so that the
	// PostgreSQL users it checks are its own: Vault names them
	// v-<display name>-<role>-..., with both parts cut to 8 characters,
	// and "report-x" is exactly 8. The template also allows region n,
	// whose role does not exist: a mint that Vault refuses.
	dbRegions    = "abcdefghijklm"
	noSuchRegion = "n"
)

// The policy every test runs: any agent under spiffe://example.org/agent/
// may ask for the three tasks, one per backend type.
const policyYAML = `
operators:
  - { id: spiffe://example.org/ops/alice, roles: [revoker] }
agents:
  - id: spiffe://example.org/agent/*
    owner: spiffe://example.org/ops/bob
    templates: [close-ticket, nightly-report, service-cert]
`

// templateFiles are the task templates: TTL 2m, renewable up to 3m
// (certificates are not renewable).
var templateFiles = map[string]string{
	"close-ticket.yaml": `
name: close-ticket
description: Read one ticket.
backend: tokens
params:
  ticket: { pattern: "^[0-9]{1,9}$" }
policy: |
  path "secret/data/tickets/{{ .params.ticket }}" { capabilities = ["read"] }
ttl: 2m
max_ttl: 3m
risk: low
`,
	"nightly-report.yaml": `
name: nightly-report
description: Log in to one region's database.
backend: app-db
params:
  region: { pattern: "^[a-n]$" }
vars: { role: "report-{{ .params.region }}" }
ttl: 2m
max_ttl: 3m
risk: low
`,
	"service-cert.yaml": `
name: service-cert
description: A certificate for one service.
backend: certs
params:
  service: { pattern: "^[a-z][a-z0-9-]{0,30}$" }
names:
  common_name: "{{ .params.service }}.svc.example.org"
ttl: 2m
risk: low
`,
}

// backendsYAML is the backends: section of latch.yaml, decoded by
// backends/catalog as latch decodes it; the crash child gets the same text.
var backendsYAML = fmt.Sprintf(`
backends:
  tokens: { type: vault-token }
  app-db: { type: vault-lease, path: "database/creds/{{ .vars.role }}" }
  certs:  { type: vault-pki, mount: %s, role: %s }
`, pkiMount, pkiRole)

// Task names and the backends behind them.
const (
	taskToken = "close-ticket"
	taskDB    = "nightly-report"
	taskCert  = "service-cert"
)

// loadPolicy compiles policyYAML with files (templateFiles when nil).
func loadPolicy(files map[string]string) (*templates.Policy, error) {
	if files == nil {
		files = templateFiles
	}
	pc, err := templates.ParsePolicy("latch.yaml", []byte(policyYAML))
	if err != nil {
		return nil, err
	}
	set, err := catalog.Parse("latch.yaml", []byte(backendsYAML))
	if err != nil {
		return nil, err
	}
	src := templates.Source{Policy: pc, Backends: set.Templates()}
	for name, body := range files {
		src.Templates = append(src.Templates, templates.File{Name: name, Data: []byte(body)})
	}
	return templates.Load(src)
}

// env is the Vault set up once for the package (vaultenv), latch's client
// logged in through AppRole, and the backends on top of it.
type env struct {
	*vaultenv.Env
	latch    *vault.Client
	backends map[string]broker.Backend
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

func newEnv(ctx context.Context) (*env, error) {
	var roles []string
	for _, r := range dbRegions {
		roles = append(roles, dbRole(string(r)))
	}
	// generate_lease: a certificate minted just before a crash is revoked
	// with its mint token (see backends/doc.go).
	ve, err := vaultenv.Setup(ctx, st, vaultenv.Options{DBRoles: roles, PKIGenerateLease: true})
	if err != nil {
		return nil, err
	}
	e := &env{Env: ve}
	if e.latch, err = ve.Login(ctx, vaultConfig(st.Vault.Addr, ve.RoleIDFile, ve.SecretIDFile, nil)); err != nil {
		return nil, fmt.Errorf("latch login: %w", err)
	}
	e.backends, err = newBackends(e.latch)
	return e, err
}

// newBackends builds the configured backends on c, through the same
// catalog as cmd/latch.
func newBackends(c *vault.Client) (map[string]broker.Backend, error) {
	set, err := catalog.Parse("latch.yaml", []byte(backendsYAML))
	if err != nil {
		return nil, err
	}
	return set.Build(c)
}

func dbRole(region string) string { return "report-" + region }

// vaultConfig is latch's Vault connection in these tests: AppRole, short
// timeouts and retry waits so that an outage costs seconds, not minutes.
func vaultConfig(addr, roleIDFile, secretIDFile string, log *slog.Logger) vault.Config {
	return vault.Config{
		Address:      addr,
		Timeout:      3 * time.Second,
		MaxRetries:   2,
		RetryWaitMin: 50 * time.Millisecond,
		RetryWaitMax: 250 * time.Millisecond,
		Auth:         vault.AuthConfig{Method: vault.AuthAppRole, RoleIDFile: roleIDFile, SecretIDFile: secretIDFile},
		Logger:       log,
	}
}

// newClient returns a new latch Vault client (not yet logged in) whose
// log goes to log (discarded when nil).
func (e *env) newClient(log *slog.Logger) (*vault.Client, error) {
	return vault.New(vaultConfig(st.Vault.Addr, e.RoleIDFile, e.SecretIDFile, log))
}
