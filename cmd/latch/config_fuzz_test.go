package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// Seeds live in testdata/fuzz/<FuzzName>/. Run with:
//
//	go test -run '^$' -fuzz '^FuzzLoadConfig$' -fuzztime 60s ./cmd/latch/

// FuzzLoadConfig loads arbitrary bytes as latch.yaml, next to an empty
// templates directory. LoadConfig must never panic, must give the same
// answer twice, and an error must be one problem per line, each naming
// the file, "FILE:line:col: message" (or "FILE: message" for the file as a
// whole), in order; a config that loads has a policy and its relative
// paths resolved against the file's directory.
func FuzzLoadConfig(f *testing.F) {
	// The templates directory is empty: a config that grants a template
	// does not load, one without backends and agents does.
	noGrants := strings.SplitN(minimalConfigYAML, "backends:", 2)[0]
	f.Add([]byte(minimalConfigYAML))
	f.Add([]byte(noGrants))
	f.Add([]byte(noGrants + `backends:
  tokens: { type: vault-token, token_role: agents }
  certs: { type: vault-pki, mount: pki, role: agents }
operators:
  - { id: spiffe://example.org/ops/alice, roles: [approver, revoker] }
freeze_windows:
  billing-close: { cron: "0 0 28 * *", duration: 120h, timezone: Europe/Berlin }
  year-end: { from: "2026-12-21T00:00:00+01:00", until: "2027-01-04T00:00:00+01:00" }
risk_tiers:
  high: { approvals: 1, max_ttl: 30m }
approvals: { pending_ttl: 1h, pickup_ttl: 15m }
auto_pause: { denials: 5, window: 10m }
notify:
  webhooks:
    - { url: http://127.0.0.1:9000/hook, secret_file: webhook.key }
    - { url: https://hooks.slack.com/services/T000/B000/XXXX, slack: true, events: [approval_requested, pause] }
templates_dir: ./templates
`))
	f.Add([]byte(`server:
  listen: 127.0.0.1:8443
  id: spiffe://example.org/latch
  admin_socket: admin.sock
  metrics_listen: 127.0.0.1:8443
spiffe: { workload_api: unix:///run/spire/agent.sock, svid_cert: a.pem }
store: {}
vault: { address: "ftp://vault", auth: { method: approle, role_id_file: r, token_file: t } }
backends:
  Bad_Name: { type: vault-token }
  certs: { type: vault-pki, mount: pki }
  kv: { type: vault-kv }
  none: {}
notify: { webhooks: [ { url: "", events: [] }, { url: "http://x/h", events: [nope] } ] }
auto_pause: { denials: 0 }
templates_dir: ""
`))
	f.Add([]byte(""))
	f.Add([]byte("---\n---\n"))
	f.Add([]byte("server: [\n"))
	f.Add([]byte("server: { id: spiffe://example.org/latch }\nserver: {}\n"))
	f.Add([]byte("a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n"))
	f.Add([]byte("server: !!binary aGVsbG8=\n"))
	f.Add([]byte("\tserver: {}\n"))
	f.Add([]byte("approvals: { pending_ttl: 10, pickup_ttl: 1d }\n"))
	f.Add([]byte("templates_dir: nowhere\n"))
	// One directory for every input: LoadConfig only reads it, and
	// making a fresh one per input costs more than the load.
	dir := f.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "templates"), 0o755); err != nil {
		f.Fatal(err)
	}
	path := filepath.Join(dir, "latch.yaml")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		cfg, err := LoadConfig(path)
		cfg2, err2 := LoadConfig(path)
		if (err == nil) != (err2 == nil) || (err != nil && err.Error() != err2.Error()) {
			t.Fatalf("two loads differ:\n%v\n---\n%v", err, err2)
		}
		if err != nil {
			checkConfigError(t, path, err.Error())
			return
		}
		if cfg.Policy == nil || cfg.File != path || cfg2.Policy == nil {
			t.Fatalf("loaded without a policy: %+v", cfg)
		}
		for _, p := range []string{cfg.TemplatesDir, cfg.Store.Path, cfg.Vault.Auth.TokenFile} {
			if p != "" && !filepath.IsAbs(p) {
				t.Fatalf("path %q not resolved against %s", p, dir)
			}
		}
	})
}

// checkConfigError checks that msg is one "file:line:col: message" (or
// "file: message") per line, naming the config file, sorted by position.
func checkConfigError(t *testing.T, path, msg string) {
	t.Helper()
	if msg == "" {
		t.Fatal("empty error")
	}
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(path) + `(?::([1-9][0-9]*):([1-9][0-9]*))?: \S`)
	prevLine, prevCol := 0, 0
	for i, line := range strings.Split(msg, "\n") {
		m := re.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("error line %d does not start with %q:line:col: a message:\n%s", i+1, path, msg)
		}
		if m[1] == "" {
			m[1], m[2] = "0", "0"
		}
		l, _ := strconv.Atoi(m[1])
		c, _ := strconv.Atoi(m[2])
		if l < prevLine || (l == prevLine && c < prevCol) {
			t.Fatalf("error line %d is out of order:\n%s", i+1, msg)
		}
		prevLine, prevCol = l, c
	}
}
