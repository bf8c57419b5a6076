package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/latchbroker/latch/notify"
	"github.com/latchbroker/latch/templates"
	"github.com/latchbroker/latch/templates/strictyaml"
)

const exampleConfigPath = "../../examples/latch.yaml"

func TestLoadConfig_Example(t *testing.T) {
	cfg, err := LoadConfig(exampleConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Server.ID != "spiffe://example.org/latch" || cfg.Server.Listen != "127.0.0.1:8443" || cfg.Server.MetricsListen != "127.0.0.1:9102" {
		t.Fatalf("server = %+v", cfg.Server)
	}
	if cfg.SPIFFE.WorkloadAPI != "unix:///run/spire/agent.sock" || cfg.Store.Path != "/var/lib/latch/latch.db" {
		t.Fatalf("spiffe/store = %+v %+v", cfg.SPIFFE, cfg.Store)
	}
	if cfg.Vault.Auth.Method != VaultAuthAppRole || cfg.Vault.Auth.RoleIDFile != "/etc/latch/vault-role-id" {
		t.Fatalf("vault = %+v", cfg.Vault)
	}
	if got, want := cfg.TemplatesDir, filepath.Join("../../examples", "templates"); got != want {
		t.Fatalf("templates_dir = %q, want %q (relative to the config file)", got, want)
	}
	if len(cfg.Backends) != 4 || cfg.Backends["certs"].Type != templates.BackendVaultPKI {
		t.Fatalf("backends = %+v", cfg.Backends)
	}
	var pki struct {
		Mount string `yaml:"mount"`
		Role  string `yaml:"role"`
	}
	if err := cfg.Backends["certs"].Decode(&pki); err != nil || pki.Mount != "pki" || pki.Role != "agents" {
		t.Fatalf("certs options = %+v, %v", pki, err)
	}
	if w := cfg.Notify.Webhooks; len(w) != 2 || len(w[0].Events) != 0 || w[0].SecretFile != "/etc/latch/webhook.key" || !w[1].Slack || w[1].Events[1] != "pause" {
		t.Fatalf("notify = %+v", cfg.Notify)
	}
	if cfg.Approvals.PickupTTL != 15*time.Minute || cfg.AutoPause.Denials != 5 || cfg.AutoPause.Window != 10*time.Minute {
		t.Fatalf("approvals = %+v, auto_pause = %+v", cfg.Approvals, cfg.AutoPause)
	}
	if cfg.Policy == nil || len(cfg.Policy.Templates()) != 6 || len(cfg.Policy.Agents()) != 4 || len(cfg.Policy.Operators()) != 3 {
		t.Fatalf("policy = %+v", cfg.Policy)
	}
	if tier := cfg.Policy.Tiers()[2]; tier.Approvals != 1 || tier.MaxTTL.String() != "30m0s" {
		t.Fatalf("high tier = %+v", tier)
	}
}

// writeConfig writes latch.yaml (and templates, name → contents) into a
// temporary directory and returns the config path.
func writeConfigDir(t *testing.T, config string, tmpls map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "templates"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range tmpls {
		if err := os.WriteFile(filepath.Join(dir, "templates", name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "latch.yaml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// minimalConfigYAML is a valid config; tests replace parts of it.
const minimalConfigYAML = `server: { id: spiffe://example.org/latch }
spiffe: { workload_api: unix:///run/spire/agent.sock }
store: { path: latch.db }
vault: { address: https://127.0.0.1:8200, auth: { method: token, token_file: token } }
backends:
  tokens: { type: vault-token }
  app-db: { type: vault-lease, path: "database/creds/{{ .vars.role }}" }
agents:
  - { id: spiffe://example.org/agent/a, owner: spiffe://example.org/ops/o, templates: [read] }
`

const minimalTemplateYAML = `name: read
backend: app-db
vars: { role: reader }
ttl: 5m
risk: low
`

func TestLoadConfig_Minimal(t *testing.T) {
	path := writeConfigDir(t, minimalConfigYAML, map[string]string{"read.yaml": minimalTemplateYAML})
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(path)
	if cfg.Store.Path != filepath.Join(dir, "latch.db") || cfg.Vault.Auth.TokenFile != filepath.Join(dir, "token") {
		t.Fatalf("relative paths not resolved: %+v %+v", cfg.Store, cfg.Vault.Auth)
	}
	d := cfg.Policy.Evaluate(templates.Request{Agent: "spiffe://example.org/agent/a", Task: "read"})
	if d.Outcome != templates.Allow || d.Rendered.Path != "database/creds/reader" {
		t.Fatalf("decision = %+v", d)
	}
}

func TestLoadConfig_Errors(t *testing.T) {
	tests := []struct {
		name   string
		config string
		tmpls  map[string]string
		want   []string // lines, with FILE for the config path and DIR for its directory
	}{
		{"unknown top-level key", minimalConfigYAML + "servr: {}\n", nil, []string{
			`FILE:10:1: unknown key "servr"; allowed: server, spiffe, store, vault, backends, operators, agents, freeze_windows, risk_tiers, notify, approvals, auto_pause, refusals, audit, oidc, console, telemetry, templates_dir`,
		}},
		{"console without oidc", minimalConfigYAML + "console: { listen: \"127.0.0.1:8444\", url: \"https://latch.example.org\", tls_cert: c.pem, tls_key: k.pem }\n", nil, []string{
			`FILE:10:1: console: needs an oidc: section (the OpenID Provider people sign in through)`,
		}},
		{"oidc and console wrong", minimalConfigYAML + "oidc: { issuer: \"http://idp.example.org\", client_id: latch }\n" +
			"console: { listen: \"127.0.0.1:8443\", url: \"https://latch.example.org/console\" }\n", nil, []string{
			`FILE:10:1: oidc: client_id and client_secret_file are required (latch's client at the provider)`,
			`FILE:10:17: oidc.issuer: expected the provider's https URL, such as https://idp.example.org/, got "http://idp.example.org"`,
			`FILE:11:1: console: tls_cert and tls_key are required (a certificate browsers trust for console.url's host)`,
			`FILE:11:20: console.listen: must differ from server.listen and server.metrics_listen`,
			`FILE:11:43: console.url: expected the https address people open, such as https://latch.example.org:8444, got "https://latch.example.org/console"`,
		}},
		{"telemetry wrong", minimalConfigYAML + "telemetry: { trace_url: \"https://traces.example.org/x\", otlp_endpoint: \"ftp://c:4318\" }\n", nil, []string{
			`FILE:10:25: telemetry.trace_url: expected an http(s) link with {trace_id} in it, such as https://jaeger.example.org/trace/{trace_id}, got "https://traces.example.org/x"`,
			`FILE:10:72: telemetry.otlp_endpoint: expected the OTLP/HTTP traces URL, such as http://127.0.0.1:4318/v1/traces, got "ftp://c:4318"`,
		}},
		{"store path and etcd", strings.Replace(minimalConfigYAML, "store: { path: latch.db }", "store: { path: latch.db, etcd: { endpoints: [\"http://127.0.0.1:2379\"] } }", 1), nil, []string{
			`FILE:3:32: store: set path or etcd, not both`,
		}},
		{"store etcd without endpoints", strings.Replace(minimalConfigYAML, "store: { path: latch.db }", "store: { etcd: { prefix: latch } }", 1), nil, []string{
			`FILE:3:16: store.etcd.endpoints is required, such as [https://etcd-1:2379]`,
		}},
		{"unknown nested key", strings.Replace(minimalConfigYAML, "store: { path: latch.db }", "store: { path: latch.db, sync: true }", 1), nil, []string{
			`FILE:3:26: unknown key "sync" in store; allowed: path, etcd, outbox`,
		}},
		{"backend's own keys are strict", strings.Replace(minimalConfigYAML, "{ type: vault-token }", "{ type: vault-token, ttl: 5m }", 1), nil, []string{
			`FILE:6:32: unknown key "ttl" in backends.tokens; allowed: token_role, group_role`,
		}},
		{"backend's own validation", strings.Replace(minimalConfigYAML, "{ type: vault-token }", `{ type: vault-token, token_role: "../root" }`, 1), nil, []string{
			`FILE:6:3: backends.tokens: vaulttoken: token_role: "../root" is not a valid Vault name (letters, digits, and - _ . inside)`,
		}},
		{"unknown backend type", strings.Replace(minimalConfigYAML, "{ type: vault-token }", "{ type: vault-kv }", 1), nil, []string{
			`FILE:6:19: backends.tokens.type: unknown backend type "vault-kv"; allowed: vault-lease, vault-pki, vault-token`,
		}},
		{"lease backend without path", strings.Replace(minimalConfigYAML, `, path: "database/creds/{{ .vars.role }}"`, "", 1), nil, []string{
			`FILE:7:3: backends.app-db: path is required for a vault-lease backend, such as database/creds/{{ .vars.role }}`,
			`DIR/templates/read.yaml:2:10: backend: vault-lease backend "app-db" has no path`,
		}},
		{"missing sections", "templates_dir: templates\n", nil, []string{
			`FILE:1:1: server.id is required (latch's own SPIFFE ID, such as spiffe://example.org/latch)`,
			`FILE:1:1: spiffe: set workload_api, or svid_cert, svid_key and bundle`,
			`FILE:1:1: store.path is required (the bbolt database file), or store.etcd for replicas on etcd`,
			`FILE:1:1: vault.address is required, such as https://127.0.0.1:8200`,
			`FILE:1:1: vault.auth.method is required; allowed: token, approle, jwt`,
			`DIR/templates/read.yaml:2:10: backend: unknown backend "app-db"; no backends are configured`,
		}},
		{"vault auth fields", strings.Replace(minimalConfigYAML, "{ method: token, token_file: token }", "{ method: approle, token_file: token }", 1), nil, []string{
			`FILE:4:43: vault.auth.role_id_file is required with method approle`,
			`FILE:4:43: vault.auth.secret_id_file is required with method approle`,
			`FILE:4:43: vault.auth.token_file is not used by method approle`,
		}},
		{"server limits", strings.Replace(minimalConfigYAML, "id: spiffe://example.org/latch", "id: spiffe://example.org/latch, read_timeout: 10ms, max_connections: 0, max_event_streams: 2, max_event_streams_per_caller: 3", 1), nil, []string{
			`FILE:1:57: server.read_timeout: 10ms is too short, want at least 1s`,
			`FILE:1:80: server.max_connections: 0 is too small, want at least 16`,
			`FILE:1:135: server.max_event_streams_per_caller: 3 is more than max_event_streams (2)`,
		}},
		{"bad server id", strings.Replace(minimalConfigYAML, "spiffe://example.org/latch", "latch", 1), nil, []string{
			`FILE:1:15: server.id: invalid SPIFFE ID "latch": scheme is missing or invalid`,
		}},
		{"template error next to config error", strings.Replace(minimalConfigYAML, "store: { path: latch.db }", "store: {}", 1),
			map[string]string{"read.yaml": strings.Replace(minimalTemplateYAML, "ttl: 5m", "ttl: 5m\nmax_ttl: 1m", 1)}, []string{
				`FILE:3:1: store.path is required (the bbolt database file), or store.etcd for replicas on etcd`,
				`DIR/templates/read.yaml:4:6: ttl: 5m exceeds max_ttl 1m`,
			}},
		{"missing templates dir", minimalConfigYAML + "templates_dir: nope\n", nil, []string{
			`FILE:9:88: agents[0].templates[0]: unknown template "read"`,
			`FILE:10:16: templates_dir: cannot read DIR/nope: no such file or directory`,
		}},
		{"empty backend", strings.Replace(minimalConfigYAML, "tokens: { type: vault-token }", "tokens:", 1), nil, []string{
			`FILE:6:3: backends.tokens: type is required; allowed: vault-lease, vault-pki, vault-token`,
		}},
		{"auto_pause without a window", minimalConfigYAML + "auto_pause: { denials: 5 }\n", nil, []string{
			`FILE:10:1: auto_pause: needs denials ≥ 1 and a window > 0, such as { denials: 5, window: 10m }; leave auto_pause out to never pause automatically`,
		}},
		{"webhook events", minimalConfigYAML + "notify:\n  webhooks:\n    - { url: http://127.0.0.1:9/a, events: [approval_requested, lease_issued] }\n    - { url: http://127.0.0.1:9/b, events: [] }\n", nil, []string{
			`FILE:12:44: notify.webhooks[0].events: unknown event type "lease_issued"; known: ` + strings.Join(notify.KnownEvents, ", "),
			`FILE:13:44: notify.webhooks[1].events: empty; leave the key out to get the default events (` + strings.Join(notify.DefaultEvents, ", ") + `)`,
		}},
		{"dead letter ttl too short", minimalConfigYAML + "notify: { dead_letter_ttl: 30m }\n", nil, []string{
			`FILE:10:28: notify.dead_letter_ttl: 30m0s is shorter than 1h0m0s (expired dead letters are deleted hourly); leave it out for the default, 720h0m0s`,
		}},
		{"negative dead letter ttl", minimalConfigYAML + "notify: { dead_letter_ttl: -1h }\n", nil, []string{
			`FILE:10:28: notify.dead_letter_ttl: -1h0m0s is shorter than 1h0m0s (expired dead letters are deleted hourly); leave it out for the default, 720h0m0s`,
		}},
		{"dead letter ttl in days", minimalConfigYAML + "notify: { dead_letter_ttl: 30d }\n", nil, []string{
			`FILE:10:28: notify.dead_letter_ttl: expected a duration such as 10m or 1h30m, got "30d"`,
		}},
		{"syntax error stops early", "server: { id: \"x }\n", nil, []string{
			`FILE:1:15: invalid YAML: could not find end character of double-quoted text`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpls := tt.tmpls
			if tmpls == nil {
				tmpls = map[string]string{"read.yaml": minimalTemplateYAML}
			}
			path := writeConfigDir(t, tt.config, tmpls)
			_, err := LoadConfig(path)
			var errs strictyaml.Errors
			if !errors.As(err, &errs) {
				t.Fatalf("err = %v (%T), want strictyaml.Errors", err, err)
			}
			got := strings.Split(err.Error(), "\n")
			if len(got) != len(tt.want) {
				t.Fatalf("got %d errors:\n%s\nwant %d", len(got), err, len(tt.want))
			}
			for i, w := range tt.want {
				w = strings.ReplaceAll(strings.ReplaceAll(w, "FILE", path), "DIR", filepath.Dir(path))
				if got[i] != w {
					t.Errorf("error %d:\n got %s\nwant %s", i, got[i], w)
				}
			}
		})
	}
}

func TestLoadConfig_Approvals(t *testing.T) {
	path := writeConfigDir(t, minimalConfigYAML+"approvals: { pending_ttl: 10m, pickup_ttl: 2m }\n", map[string]string{"read.yaml": minimalTemplateYAML})
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Approvals.PendingTTL != 10*time.Minute || cfg.Approvals.PickupTTL != 2*time.Minute {
		t.Fatalf("approvals = %+v", cfg.Approvals)
	}
}

func TestLoadConfig_AutoPauseAndDefaultEvents(t *testing.T) {
	path := writeConfigDir(t, minimalConfigYAML+"auto_pause: { denials: 5, window: 10m }\nnotify: { webhooks: [ { url: http://127.0.0.1:9/hook } ] }\n",
		map[string]string{"read.yaml": minimalTemplateYAML})
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if ap := cfg.AutoPause; !ap.Enabled() || ap.Denials != 5 || ap.Window != 10*time.Minute {
		t.Fatalf("auto_pause = %+v", ap)
	}
	if w := cfg.Notify.Webhooks[0]; len(w.Events) != 0 {
		t.Fatalf("events = %v; want none, so that notify sends its defaults", w.Events)
	}

	path = writeConfigDir(t, minimalConfigYAML, map[string]string{"read.yaml": minimalTemplateYAML})
	if cfg, err = LoadConfig(path); err != nil || cfg.AutoPause.Enabled() {
		t.Fatalf("without auto_pause: enabled = %v, err %v; want off", cfg != nil && cfg.AutoPause.Enabled(), err)
	}
}

func TestLoadConfig_DeadLetterTTL(t *testing.T) {
	for name, tc := range map[string]struct {
		notify string
		want   time.Duration
	}{
		"Default": {"notify: { webhooks: [ { url: http://127.0.0.1:9/hook } ] }\n", 0}, // notify.New applies notify.DefaultDeadLetterTTL
		"Set":     {"notify: { webhooks: [ { url: http://127.0.0.1:9/hook } ], dead_letter_ttl: 168h }\n", 7 * 24 * time.Hour},
		"Minimum": {"notify: { dead_letter_ttl: 1h }\n", time.Hour},
		"Zero":    {"notify: { dead_letter_ttl: 0s }\n", 0}, // the default, as in approvals:
	} {
		t.Run(name, func(t *testing.T) {
			path := writeConfigDir(t, minimalConfigYAML+tc.notify, map[string]string{"read.yaml": minimalTemplateYAML})
			cfg, err := LoadConfig(path)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Notify.DeadLetterTTL != tc.want {
				t.Fatalf("dead_letter_ttl = %s, want %s", cfg.Notify.DeadLetterTTL, tc.want)
			}
		})
	}
}

func TestWebhookKey(t *testing.T) {
	for in, want := range map[string]string{
		"SECRET\n": "SECRET", "SECRET\r\n": "SECRET", "SECRET": "SECRET", "SECRET\n\n": "SECRET\n", " SECRET \n": " SECRET ", "SECRET\r": "SECRET\r",
	} {
		if got := string(webhookKey([]byte(in))); got != want {
			t.Errorf("webhookKey(%q) = %q, want %q", in, got, want)
		}
	}
}
