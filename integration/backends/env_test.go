package backends

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/jackc/pgx/v5"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/latchbroker/latch/backends/vault"
	"github.com/latchbroker/latch/backends/vaultlease"
	"github.com/latchbroker/latch/backends/vaultpki"
	"github.com/latchbroker/latch/backends/vaulttoken"
	"github.com/latchbroker/latch/broker"
)

// env is the Vault set up once for the package, and latch's client and
// backends on top of it.
type env struct {
	root    *vaultapi.Client
	latch   *vault.Client
	metrics *prometheus.Registry

	roleIDFile, secretIDFile string

	tokens *vaulttoken.Backend
	leases *vaultlease.Backend
	certs  *vaultpki.Backend

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

// Names the README's policy uses: the tests set Vault up to match it.
const (
	dbMount   = "database"
	dbRole    = "report-eu" // database/creds/report-* in latch_mint
	pkiMount  = "pki"
	pkiRole   = "agents"
	kvTickets = "secret/data/tickets/"
)

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
	// The role's own TTL is an hour: latch's lease TTL must win.
	_, err := e.root.Logical().WriteWithContext(ctx, dbMount+"/roles/"+dbRole, map[string]any{
		"db_name": "pg",
		"creation_statements": `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';
GRANT CONNECT ON DATABASE postgres TO "{{name}}";`,
		"default_ttl": "1h",
		"max_ttl":     "2h",
	})
	return err
}

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
	return e.setPKIRole(ctx, false)
}

// setPKIRole (re)writes the agents role; generateLease switches Vault
// leases for certificates on or off.
func (e *env) setPKIRole(ctx context.Context, generateLease bool) error {
	_, err := e.root.Logical().WriteWithContext(ctx, pkiMount+"/roles/"+pkiRole, map[string]any{
		"allowed_domains":  "svc.example.org",
		"allow_subdomains": true,
		"allowed_uri_sans": "spiffe://example.org/*",
		"key_type":         "ec",
		"key_bits":         256,
		"max_ttl":          "72h",
		"generate_lease":   generateLease,
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
// the policies, its `vault ...` lines the commands.
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

// appRoleFiles writes the role ID and a fresh secret ID of an AppRole role
// to files, the way an operator provisions latch.
func (e *env) appRoleFiles(ctx context.Context, role string) (roleIDFile, secretIDFile string, err error) {
	s, err := e.root.Logical().ReadWithContext(ctx, "auth/approle/role/"+role+"/role-id")
	if err != nil {
		return "", "", err
	}
	sid, err := e.root.Logical().WriteWithContext(ctx, "auth/approle/role/"+role+"/secret-id", nil)
	if err != nil {
		return "", "", err
	}
	dir, err := os.MkdirTemp(st.Dir, "approle-")
	if err != nil {
		return "", "", err
	}
	roleIDFile, secretIDFile = filepath.Join(dir, "role-id"), filepath.Join(dir, "secret-id")
	if err := os.WriteFile(roleIDFile, []byte(s.Data["role_id"].(string)+"\n"), 0o600); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(secretIDFile, []byte(sid.Data["secret_id"].(string)+"\n"), 0o600); err != nil {
		return "", "", err
	}
	return roleIDFile, secretIDFile, nil
}

func (e *env) loginLatch(ctx context.Context) error {
	var err error
	if e.roleIDFile, e.secretIDFile, err = e.appRoleFiles(ctx, "latch"); err != nil {
		return err
	}
	e.metrics = prometheus.NewRegistry()
	e.latch, err = vault.New(vault.Config{
		Address: st.Vault.Addr,
		Auth:    vault.AuthConfig{Method: vault.AuthAppRole, RoleIDFile: e.roleIDFile, SecretIDFile: e.secretIDFile},
		Metrics: vault.NewPrometheusMetrics(e.metrics),
	})
	if err != nil {
		return err
	}
	if err := e.latch.Login(ctx); err != nil {
		return err
	}
	go func() { _ = e.latch.Run(context.Background()) }()
	return nil
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

// clientWithToken is a Vault client acting as the agent holding token.
func clientWithToken(tb testing.TB, token string) *vaultapi.Client {
	tb.Helper()
	cfg := vaultapi.DefaultConfig()
	cfg.Address = st.Vault.Addr
	cfg.MaxRetries = 0
	c, err := vaultapi.NewClient(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	c.SetToken(token)
	return c
}

// lookupAccessor is root's view of a token.
func (e *env) lookupAccessor(ctx context.Context, accessor string) (*vaultapi.Secret, error) {
	return e.root.Logical().WriteWithContext(ctx, "auth/token/lookup-accessor", map[string]any{"accessor": accessor})
}

// pgRoleExists reports whether PostgreSQL has a role named name.
func pgRoleExists(ctx context.Context, tb testing.TB, name string) bool {
	tb.Helper()
	conn, err := pgx.Connect(ctx, st.Postgres.URL(st.Postgres.User, st.Postgres.Password))
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_roles WHERE rolname = $1", name).Scan(&n); err != nil {
		tb.Fatal(err)
	}
	return n > 0
}

// pgLogin logs in as user and returns current_user.
func pgLogin(ctx context.Context, user, password string) (string, error) {
	conn, err := pgx.Connect(ctx, st.Postgres.URL(user, password))
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	var who string
	err = conn.QueryRow(ctx, "SELECT current_user").Scan(&who)
	return who, err
}

// crlSerials returns the serials on the PKI mount's current CRL.
func (e *env) crlSerials(ctx context.Context, tb testing.TB) map[string]bool {
	tb.Helper()
	resp, err := e.root.Logical().ReadRawWithContext(ctx, pkiMount+"/crl")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	der, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		tb.Fatalf("parse CRL: %v", err)
	}
	if err := crl.CheckSignatureFrom(e.ca); err != nil {
		tb.Fatalf("CRL not signed by the PKI mount's CA: %v", err)
	}
	out := map[string]bool{}
	for _, r := range crl.RevokedCertificateEntries {
		out[r.SerialNumber.Text(16)] = true
	}
	return out
}

// serialHex turns Vault's "1a:2b:..." into big.Int hex as the CRL has it.
func serialHex(tb testing.TB, vaultSerial string) string {
	tb.Helper()
	n, ok := new(big.Int).SetString(strings.ReplaceAll(vaultSerial, ":", ""), 16)
	if !ok {
		tb.Fatalf("bad serial %q", vaultSerial)
	}
	return n.Text(16)
}

// eventually polls cond until it holds or timeout passes.
func eventually(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("after %s: %s", timeout, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
