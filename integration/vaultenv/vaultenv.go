package vaultenv

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/latchbroker/latch/backends/vault"
	"github.com/latchbroker/latch/integration/stack"
)

// Names the README's policy uses: Setup makes Vault match it.
const (
	DBMount  = "database"
	PKIMount = "pki"
	PKIRole  = "agents"
)

// Options says what Setup creates beyond the README's fixed names.
type Options struct {
	// DBRoles are the database roles to create; the README's policy lets
	// latch read database/creds/report-*. Each has an hour's TTL, so that
	// latch's own lease TTL must win.
	DBRoles []string
	// PKIGenerateLease makes Vault create leases for certificates.
	PKIGenerateLease bool
}

// Env is a Vault set up for latch.
type Env struct {
	Stack *stack.Stack
	Root  *vaultapi.Client // set-up and probes only

	// RoleIDFile and SecretIDFile hold the AppRole credentials of role
	// "latch", whose token has exactly the README policy.
	RoleIDFile, SecretIDFile string

	CA *x509.Certificate // the PKI mount's root
}

// Setup mounts and configures the engines, writes KV tickets 42 and 43,
// runs the README's policy section and provisions latch's AppRole
// credentials in files below st.Dir.
func Setup(ctx context.Context, st *stack.Stack, o Options) (*Env, error) {
	root, err := st.Vault.Client()
	if err != nil {
		return nil, err
	}
	e := &Env{Stack: st, Root: root}
	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"database engine", func(ctx context.Context) error { return e.setupDatabase(ctx, o.DBRoles) }},
		{"pki engine", func(ctx context.Context) error { return e.setupPKI(ctx, o.PKIGenerateLease) }},
		{"kv data", e.setupKV},
		{"README policy", e.applyREADME},
		{"latch AppRole", func(ctx context.Context) error {
			var err error
			e.RoleIDFile, e.SecretIDFile, err = e.AppRoleFiles(ctx, "latch")
			return err
		}},
	}
	for _, s := range steps {
		if err := s.fn(ctx); err != nil {
			return nil, fmt.Errorf("vaultenv: %s: %w", s.name, err)
		}
	}
	return e, nil
}

func (e *Env) setupDatabase(ctx context.Context, roles []string) error {
	if err := e.Root.Sys().MountWithContext(ctx, DBMount, &vaultapi.MountInput{Type: "database"}); err != nil {
		return err
	}
	pg := e.Stack.Postgres
	if _, err := e.Root.Logical().WriteWithContext(ctx, DBMount+"/config/pg", map[string]any{
		"plugin_name":    "postgresql-database-plugin",
		"connection_url": pg.VaultConnectionURL(),
		"username":       pg.User,
		"password":       pg.Password,
		"allowed_roles":  "*",
	}); err != nil {
		return err
	}
	for _, r := range roles {
		if _, err := e.Root.Logical().WriteWithContext(ctx, DBMount+"/roles/"+r, map[string]any{
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

func (e *Env) setupPKI(ctx context.Context, generateLease bool) error {
	if err := e.Root.Sys().MountWithContext(ctx, PKIMount, &vaultapi.MountInput{
		Type: "pki", Config: vaultapi.MountConfigInput{MaxLeaseTTL: "87600h"},
	}); err != nil {
		return err
	}
	s, err := e.Root.Logical().WriteWithContext(ctx, PKIMount+"/root/generate/internal", map[string]any{
		"common_name": "latch test root", "ttl": "87600h", "key_type": "ec", "key_bits": 256,
	})
	if err != nil {
		return err
	}
	block, _ := pem.Decode([]byte(s.Data["certificate"].(string)))
	if block == nil {
		return errors.New("root certificate is not PEM")
	}
	if e.CA, err = x509.ParseCertificate(block.Bytes); err != nil {
		return err
	}
	return e.SetPKIRole(ctx, generateLease)
}

// SetPKIRole (re)writes the agents role; generateLease switches Vault
// leases for certificates on or off.
func (e *Env) SetPKIRole(ctx context.Context, generateLease bool) error {
	_, err := e.Root.Logical().WriteWithContext(ctx, PKIMount+"/roles/"+PKIRole, map[string]any{
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

func (e *Env) setupKV(ctx context.Context) error {
	for _, n := range []string{"42", "43"} {
		if _, err := e.Root.KVv2("secret").Put(ctx, "tickets/"+n, map[string]any{"body": "ticket " + n}); err != nil {
			return err
		}
	}
	return nil
}

// applyREADME runs the README's Vault policy section: its HCL blocks are
// the policies, its `vault ...` lines the commands.
func (e *Env) applyREADME(ctx context.Context) error {
	if err := e.Root.Sys().EnableAuthWithOptionsWithContext(ctx, "approle", &vaultapi.EnableAuthOptions{Type: "approle"}); err != nil {
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
			if err := e.Root.Sys().PutPolicyWithContext(ctx, cmd[3], hcl); err != nil {
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
			if _, err := e.Root.Logical().WriteWithContext(ctx, cmd[2], data); err != nil {
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
	if len(sec.files) != 3 || len(sec.commands) < 7 {
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

// AppRoleFiles writes the role ID and a fresh secret ID of an AppRole role
// to files, the way an operator provisions latch.
func (e *Env) AppRoleFiles(ctx context.Context, role string) (roleIDFile, secretIDFile string, err error) {
	s, err := e.Root.Logical().ReadWithContext(ctx, "auth/approle/role/"+role+"/role-id")
	if err != nil {
		return "", "", err
	}
	sid, err := e.Root.Logical().WriteWithContext(ctx, "auth/approle/role/"+role+"/secret-id", nil)
	if err != nil {
		return "", "", err
	}
	dir, err := os.MkdirTemp(e.Stack.Dir, "approle-")
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

// Config is latch's Vault connection: the harness's address and AppRole
// login with the files Setup wrote. Callers add timeouts, metrics, logs.
func (e *Env) Config() vault.Config {
	return vault.Config{
		Address: e.Stack.Vault.Addr,
		Auth:    vault.AuthConfig{Method: vault.AuthAppRole, RoleIDFile: e.RoleIDFile, SecretIDFile: e.SecretIDFile},
	}
}

// Login returns a latch Vault client for cfg, logged in and renewing its
// token in the background.
func (e *Env) Login(ctx context.Context, cfg vault.Config) (*vault.Client, error) {
	c, err := vault.New(cfg)
	if err != nil {
		return nil, err
	}
	if err := c.Login(ctx); err != nil {
		return nil, err
	}
	go func() { _ = c.Run(context.Background()) }()
	return c, nil
}

// Eventually polls cond until it returns nil or timeout passes.
func Eventually(tb testing.TB, timeout time.Duration, cond func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("after %s: %v", timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
