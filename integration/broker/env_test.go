package broker

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/latchbroker/latch/backends/vault"
	"github.com/latchbroker/latch/backends/vaultlease"
	"github.com/latchbroker/latch/backends/vaultpki"
	"github.com/latchbroker/latch/backends/vaulttoken"
	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/templates"
)

// Names the README's policy uses; the tests set Vault up to match it.
const (
	dbMount  = "database"
	pkiMount = "pki"
	pkiRole  = "agents"
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

// backendConfig is one entry of the backends: section, as the crash child
// gets it too.
type backendConfig struct {
	Type  string `json:"type"`
	Path  string `json:"path,omitempty"`
	Mount string `json:"mount,omitempty"`
	Role  string `json:"role,omitempty"`
}

var backendConfigs = map[string]backendConfig{
	"tokens": {Type: vaulttoken.Type},
	"app-db": {Type: vaultlease.Type, Path: "database/creds/{{ .vars.role }}"},
	"certs":  {Type: vaultpki.Type, Mount: pkiMount, Role: pkiRole},
}

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
	src := templates.Source{Policy: pc, Backends: map[string]templates.Backend{}}
	for name, b := range backendConfigs {
		src.Backends[name] = templates.Backend{Type: b.Type, Path: b.Path}
	}
	for name, body := range files {
		src.Templates = append(src.Templates, templates.File{Name: name, Data: []byte(body)})
	}
	return templates.Load(src)
}

// env is the Vault set up once for the package, latch's client logged in
// through AppRole, and the backends on top of it.
type env struct {
	root  *vaultapi.Client
	latch *vault.Client

	roleIDFile, secretIDFile string
	backends                 map[string]broker.Backend

	ca *x509.Certificate // the PKI mount's root
}

var (
	envOnce sync.Once
	theEnv  *env
	envErr  error
)

// setup returns the shared env, building it on first use.
func setup(tb testing.TB) *env {
	tb.Helper()
	envOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		theEnv, envErr = newEnv(ctx)
	})
	if envErr != nil {
		tb.Fatalf("set up Vault: %v", envErr)
	}
	return theEnv
}

func newEnv(ctx context.Context) (*env, error) {
	root, err := st.Vault.Client()
	if err != nil {
		return nil, err
	}
	e := &env{root: root}
	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"database engine", e.setupDatabase},
		{"pki engine", e.setupPKI},
		{"kv data", e.setupKV},
		{"README policy", e.applyREADME},
		{"latch login", e.loginLatch},
	}
	for _, s := range steps {
		if err := s.fn(ctx); err != nil {
			return nil, fmt.Errorf("%s: %w", s.name, err)
		}
	}
	e.backends, err = newBackends(e.latch)
	return e, err
}

// newBackends builds the configured backends on c, as cmd/latch does.
func newBackends(c *vault.Client) (map[string]broker.Backend, error) {
	out := map[string]broker.Backend{}
	for name, b := range backendConfigs {
		var be broker.Backend
		var err error
		switch b.Type {
		case vaulttoken.Type:
			be, err = vaulttoken.New(c, vaulttoken.Config{})
		case vaultlease.Type:
			be, err = vaultlease.New(c, vaultlease.Config{Path: b.Path})
		case vaultpki.Type:
			be, err = vaultpki.New(c, vaultpki.Config{Mount: b.Mount, Role: b.Role})
		}
		if err != nil {
			return nil, err
		}
		out[name] = be
	}
	return out, nil
}

func (e *env) setupDatabase(ctx context.Context) error {
	if err := e.root.Sys().MountWithContext(ctx, dbMount, &vaultapi.MountInput{Type: "database"}); err != nil {
		return err
	}
	pg := st.Postgres
	if _, err := e.root.Logical().WriteWithContext(ctx, dbMount+"/config/pg", map[string]any{
		"plugin_name":    "postgresql-database-plugin",
		"connection_url": pg.VaultConnectionURL(),
		"username":       pg.User,
		"password":       pg.Password,
		"allowed_roles":  "*",
	}); err != nil {
		return err
	}
	for _, r := range dbRegions {
		// The role's own TTL is an hour: latch's lease TTL must win.
		if _, err := e.root.Logical().WriteWithContext(ctx, dbMount+"/roles/"+dbRole(string(r)), map[string]any{
			"db_name": "pg",
			"creation_statements": `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';
GRANT CONNECT ON DATABASE postgres TO "{{name}}";`,
			"default_ttl": "1h",
			"max_ttl":     "2h",
		}); err != nil {
			return err
		}
	}
	return nil
}

func dbRole(region string) string { return "report-" + region }

func (e *env) setupPKI(ctx context.Context) error {
	if err := e.root.Sys().MountWithContext(ctx, pkiMount, &vaultapi.MountInput{
		Type: "pki", Config: vaultapi.MountConfigInput{MaxLeaseTTL: "87600h"},
	}); err != nil {
		return err
	}
	s, err := e.root.Logical().WriteWithContext(ctx, pkiMount+"/root/generate/internal", map[string]any{
		"common_name": "latch test root", "ttl": "87600h", "key_type": "ec", "key_bits": 256,
	})
	if err != nil {
		return err
	}
	block, _ := pem.Decode([]byte(s.Data["certificate"].(string)))
	if block == nil {
		return errors.New("root certificate is not PEM")
	}
	if e.ca, err = x509.ParseCertificate(block.Bytes); err != nil {
		return err
	}
	// generate_lease: a certificate minted just before a crash is revoked
	// with its mint token (see backends/doc.go).
	_, err = e.root.Logical().WriteWithContext(ctx, pkiMount+"/roles/"+pkiRole, map[string]any{
		"allowed_domains":  "svc.example.org",
		"allow_subdomains": true,
		"key_type":         "ec",
		"key_bits":         256,
		"max_ttl":          "72h",
		"generate_lease":   true,
	})
	return err
}

func (e *env) setupKV(ctx context.Context) error {
	for _, n := range []string{"42", "43"} {
		if _, err := e.root.KVv2("secret").Put(ctx, "tickets/"+n, map[string]any{"body": "ticket " + n}); err != nil {
			return err
		}
	}
	return nil
}

// applyREADME runs the README's Vault policy section: its HCL blocks are
// the policies, its `vault ...` lines the commands (as integration/backends
// does).
func (e *env) applyREADME(ctx context.Context) error {
	if err := e.root.Sys().EnableAuthWithOptionsWithContext(ctx, "approle", &vaultapi.EnableAuthOptions{Type: "approle"}); err != nil {
		return err
	}
	sec, err := readmePolicySection()
	if err != nil {
		return err
	}
	for _, cmd := range sec.commands {
		switch {
		case len(cmd) == 5 && cmd[1] == "policy" && cmd[2] == "write":
			hcl, ok := sec.files[cmd[4]]
			if !ok {
				return fmt.Errorf("README: %s names %s, which has no HCL block", strings.Join(cmd, " "), cmd[4])
			}
			if err := e.root.Sys().PutPolicyWithContext(ctx, cmd[3], hcl); err != nil {
				return fmt.Errorf("README: %s: %w", strings.Join(cmd, " "), err)
			}
		case len(cmd) >= 3 && cmd[1] == "write":
			data := map[string]any{}
			for _, kv := range cmd[3:] {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return fmt.Errorf("README: %s: %q is not key=value", strings.Join(cmd, " "), kv)
				}
				data[k] = v
			}
			if _, err := e.root.Logical().WriteWithContext(ctx, cmd[2], data); err != nil {
				return fmt.Errorf("README: %s: %w", strings.Join(cmd, " "), err)
			}
		default:
			return fmt.Errorf("README: cannot run %q", strings.Join(cmd, " "))
		}
	}
	return nil
}

type policySection struct {
	files    map[string]string // latch.hcl -> policy text
	commands [][]string        // vault ... lines, split into words
}

// readmePolicySection parses "## The Vault policy latch needs" from the
// repository's README.md.
func readmePolicySection() (*policySection, error) {
	_, file, _, _ := runtime.Caller(0)
	b, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "..", "README.md"))
	if err != nil {
		return nil, err
	}
	const heading = "## The Vault policy latch needs"
	text := string(b)
	i := strings.Index(text, "\n"+heading+"\n")
	if i < 0 {
		return nil, fmt.Errorf("README.md has no %q section", heading)
	}
	text = text[i+len(heading)+2:]
	if j := strings.Index(text, "\n## "); j >= 0 {
		text = text[:j]
	}
	sec := &policySection{files: map[string]string{}}
	sc := bufio.NewScanner(strings.NewReader(text))
	var lang string
	var block []string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case lang == "" && strings.HasPrefix(line, "```"):
			lang, block = strings.TrimPrefix(line, "```"), nil
			if lang == "" {
				lang = "text"
			}
		case lang != "" && line == "```":
			switch lang {
			case "hcl":
				name := strings.Fields(strings.TrimPrefix(block[0], "#"))[0]
				sec.files[name] = strings.Join(block, "\n") + "\n"
			case "sh":
				cmds, err := shellCommands(block)
				if err != nil {
					return nil, err
				}
				sec.commands = append(sec.commands, cmds...)
			}
			lang = ""
		case lang != "":
			block = append(block, line)
		}
	}
	if len(sec.files) != 2 || len(sec.commands) < 5 {
		return nil, fmt.Errorf("README policy section: found %d HCL blocks and %d commands", len(sec.files), len(sec.commands))
	}
	return sec, nil
}

// shellCommands splits the vault lines of a sh block into words, handling
// comments, line continuations and single quotes.
func shellCommands(lines []string) ([][]string, error) {
	var out [][]string
	var cur string
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "#") || (l == "" && cur == "") {
			continue
		}
		if strings.HasSuffix(l, `\`) {
			cur += strings.TrimSuffix(l, `\`) + " "
			continue
		}
		cur += l
		var words []string
		var w strings.Builder
		quoted, have := false, false
		for _, r := range cur {
			switch {
			case r == '\'':
				quoted, have = !quoted, true
			case (r == ' ' || r == '\t') && !quoted:
				if have {
					words = append(words, w.String())
					w.Reset()
					have = false
				}
			default:
				w.WriteRune(r)
				have = true
			}
		}
		if quoted {
			return nil, fmt.Errorf("README: unbalanced quote in %q", cur)
		}
		if have {
			words = append(words, w.String())
		}
		if len(words) > 0 && words[0] != "vault" {
			return nil, fmt.Errorf("README: the policy section's sh blocks hold vault commands only, got %q", cur)
		}
		out = append(out, words)
		cur = ""
	}
	return out, nil
}

func (e *env) loginLatch(ctx context.Context) error {
	s, err := e.root.Logical().ReadWithContext(ctx, "auth/approle/role/latch/role-id")
	if err != nil {
		return err
	}
	sid, err := e.root.Logical().WriteWithContext(ctx, "auth/approle/role/latch/secret-id", nil)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp(st.Dir, "approle-")
	if err != nil {
		return err
	}
	e.roleIDFile, e.secretIDFile = filepath.Join(dir, "role-id"), filepath.Join(dir, "secret-id")
	if err := os.WriteFile(e.roleIDFile, []byte(s.Data["role_id"].(string)+"\n"), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(e.secretIDFile, []byte(sid.Data["secret_id"].(string)+"\n"), 0o600); err != nil {
		return err
	}
	e.latch, err = e.newClient(nil)
	if err != nil {
		return err
	}
	if err := e.latch.Login(ctx); err != nil {
		return err
	}
	go func() { _ = e.latch.Run(context.Background()) }()
	return nil
}

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
	return vault.New(vaultConfig(st.Vault.Addr, e.roleIDFile, e.secretIDFile, log))
}
