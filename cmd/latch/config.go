package main

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/latchbroker/latch/backends/catalog"
	"github.com/latchbroker/latch/notify"
	"github.com/latchbroker/latch/templates"
	"github.com/latchbroker/latch/templates/strictyaml"
)

// Config is latch.yaml: defaults, then the file, then typed values. Unknown
// keys, wrong types and duplicates are errors naming file:line:col; the
// policy sections (operators, agents, freeze_windows, risk_tiers) and the
// templates are validated and compiled by package templates into Policy.
//
// Relative paths in the file are relative to the file's directory, so a
// config works the same from any working directory.
type Config struct {
	// File is the path the config was loaded from.
	File string `yaml:"-"`

	Server   ServerConfig             `yaml:"server"`
	SPIFFE   SPIFFEConfig             `yaml:"spiffe"`
	Store    StoreConfig              `yaml:"store"`
	Vault    VaultConfig              `yaml:"vault"`
	Backends map[string]catalog.Block `yaml:"backends"`
	// operators, agents, freeze_windows, risk_tiers.
	templates.PolicyConfig `yaml:",inline"`
	Notify                 NotifyConfig    `yaml:"notify"`
	Approvals              ApprovalsConfig `yaml:"approvals"`
	AutoPause              AutoPauseConfig `yaml:"auto_pause"`
	Refusals               RefusalsConfig  `yaml:"refusals"`
	Audit                  AuditConfig     `yaml:"audit"`
	OIDC                   *OIDCConfig     `yaml:"oidc"`
	Console                *ConsoleConfig  `yaml:"console"`
	Telemetry              TelemetryConfig `yaml:"telemetry"`
	TemplatesDir           string          `yaml:"templates_dir"`

	// Policy is the compiled policy; LoadConfig sets it.
	Policy *templates.Policy `yaml:"-"`
	// backends are the decoded backends: section; the server builds them
	// over latch's Vault client.
	backends catalog.Set

	ServerAt       strictyaml.Pos `yaml:"server,pos"`
	SPIFFEAt       strictyaml.Pos `yaml:"spiffe,pos"`
	StoreAt        strictyaml.Pos `yaml:"store,pos"`
	VaultAt        strictyaml.Pos `yaml:"vault,pos"`
	RefusalsAt     strictyaml.Pos `yaml:"refusals,pos"`
	AuditAt        strictyaml.Pos `yaml:"audit,pos"`
	TemplatesDirAt strictyaml.Pos `yaml:"templates_dir,pos"`
}

// ServerConfig is server:.
type ServerConfig struct {
	// Listen is the agent and operator API address (TLS 1.3).
	Listen string `yaml:"listen"`
	// ID is latch's own SPIFFE ID: the audience agents' JWT-SVIDs name.
	ID string `yaml:"id"`
	// AdminSocket is the break-glass local socket (mode 0600).
	AdminSocket string `yaml:"admin_socket"`
	// MetricsListen serves /metrics, /healthz and /readyz.
	MetricsListen string `yaml:"metrics_listen"`

	// Connections on listen: a request (headers and body) must arrive
	// within ReadTimeout, a keep-alive connection idle for IdleTimeout is
	// closed, headers are at most MaxHeaderBytes, and at most
	// MaxConnections are open at once (more wait to be accepted). Event
	// streams and long polls are not cut by ReadTimeout: they have their
	// own caps, MaxEventStreams in all and MaxEventStreamsPerCaller.
	ReadTimeout              time.Duration `yaml:"read_timeout"`
	IdleTimeout              time.Duration `yaml:"idle_timeout"`
	MaxHeaderBytes           int           `yaml:"max_header_bytes"`
	MaxConnections           int           `yaml:"max_connections"`
	MaxEventStreams          int           `yaml:"max_event_streams"`
	MaxEventStreamsPerCaller int           `yaml:"max_event_streams_per_caller"`
	// JWTReplayCache, when > 0, refuses a JWT-SVID presented a second
	// time, remembering up to that many tokens until they expire. Off by
	// default: see the README on SPIRE agents that cache JWT-SVIDs.
	JWTReplayCache int `yaml:"jwt_replay_cache"`
	// Pprof serves Go's runtime profiles under /debug/pprof/ on
	// MetricsListen, to profile latch under load. Off by default: a
	// profile holds code paths and sizes, not values, but whoever reaches
	// metrics_listen may take one, and a CPU profile costs CPU.
	Pprof bool `yaml:"pprof"`

	At              strictyaml.Pos `yaml:",pos"`
	ListenAt        strictyaml.Pos `yaml:"listen,pos"`
	IDAt            strictyaml.Pos `yaml:"id,pos"`
	MetricsListenAt strictyaml.Pos `yaml:"metrics_listen,pos"`
	LimitsAt        struct {
		ReadTimeout              strictyaml.Pos `yaml:"read_timeout,pos"`
		IdleTimeout              strictyaml.Pos `yaml:"idle_timeout,pos"`
		MaxHeaderBytes           strictyaml.Pos `yaml:"max_header_bytes,pos"`
		MaxConnections           strictyaml.Pos `yaml:"max_connections,pos"`
		MaxEventStreams          strictyaml.Pos `yaml:"max_event_streams,pos"`
		MaxEventStreamsPerCaller strictyaml.Pos `yaml:"max_event_streams_per_caller,pos"`
		JWTReplayCache           strictyaml.Pos `yaml:"jwt_replay_cache,pos"`
	} `yaml:",inline"`
}

// SPIFFEConfig is spiffe: latch's own SVID and trust bundle come from the
// Workload API, or from files.
type SPIFFEConfig struct {
	WorkloadAPI string `yaml:"workload_api"`
	SVIDCert    string `yaml:"svid_cert"`
	SVIDKey     string `yaml:"svid_key"`
	Bundle      string `yaml:"bundle"`

	At            strictyaml.Pos `yaml:",pos"`
	WorkloadAPIAt strictyaml.Pos `yaml:"workload_api,pos"`
}

// StoreConfig is store:: exactly one of path (bbolt) and etcd.
type StoreConfig struct {
	// Path is the bbolt database file.
	Path string      `yaml:"path"`
	Etcd *EtcdConfig `yaml:"etcd"`
	// Outbox is the webhook outbox (a bbolt file of this server's own):
	// <path>.outbox by default; required with etcd.
	Outbox string `yaml:"outbox"`

	At     strictyaml.Pos `yaml:",pos"`
	EtcdAt strictyaml.Pos `yaml:"etcd,pos"`
}

// EtcdConfig is store.etcd:.
type EtcdConfig struct {
	Endpoints   []string      `yaml:"endpoints"`
	Prefix      string        `yaml:"prefix"` // default /latch
	CACert      string        `yaml:"ca_cert"`
	Cert        string        `yaml:"cert"`
	Key         string        `yaml:"key"`
	DialTimeout time.Duration `yaml:"dial_timeout"` // default 5s
	// KeepEnded is how long the record of an ended lease stays in etcd
	// (default 24h): etcd's space is bounded (a 2 GiB quota by default).
	KeepEnded time.Duration `yaml:"keep_ended"`
}

// defaultKeepEnded is store.etcd.keep_ended's default.
const defaultKeepEnded = 24 * time.Hour

// VaultConfig is vault:.
type VaultConfig struct {
	Address   string          `yaml:"address"`
	CACert    string          `yaml:"ca_cert"`
	Namespace string          `yaml:"namespace"`
	Auth      VaultAuthConfig `yaml:"auth"`

	At        strictyaml.Pos `yaml:",pos"`
	AddressAt strictyaml.Pos `yaml:"address,pos"`
	AuthAt    strictyaml.Pos `yaml:"auth,pos"`
}

// Vault auth methods.
const (
	VaultAuthToken   = "token"   // token_file
	VaultAuthAppRole = "approle" // role_id_file, secret_id_file
	VaultAuthJWT     = "jwt"     // role; latch logs in with its own JWT-SVID
)

// VaultAuthConfig is vault.auth:.
type VaultAuthConfig struct {
	Method       string `yaml:"method"`
	TokenFile    string `yaml:"token_file"`
	RoleIDFile   string `yaml:"role_id_file"`
	SecretIDFile string `yaml:"secret_id_file"`
	// Role is the Vault JWT auth role (method jwt).
	Role string `yaml:"role"`
	// Mount is the auth method's mount path; defaults to the method name.
	Mount string `yaml:"mount"`

	At       strictyaml.Pos `yaml:",pos"`
	MethodAt strictyaml.Pos `yaml:"method,pos"`
}

// AuditConfig is audit: how often latch signs a checkpoint of its audit
// chain (every CheckpointEvery events or CheckpointInterval, whichever
// comes first), and the file it also appends them to, best on another
// volume or host than the database.
type AuditConfig struct {
	CheckpointEvery    int           `yaml:"checkpoint_every"`
	CheckpointInterval time.Duration `yaml:"checkpoint_interval"`
	CheckpointFile     string        `yaml:"checkpoint_file"`

	At strictyaml.Pos `yaml:",pos"`
}

// RefusalsConfig is refusals: what a caller's refused requests may cost.
// PerCaller refused requests a minute (4xx), then 429 too_many_refusals,
// unevaluated and unaudited, until the budget refills. Of each caller's
// refusals of one kind and reason, AuditEach per Window are audited one
// by one and the rest counted into one event (outcome coalesced).
type RefusalsConfig struct {
	PerCaller int           `yaml:"per_caller"`
	AuditEach int           `yaml:"audit_each"`
	Window    time.Duration `yaml:"window"`

	At strictyaml.Pos `yaml:",pos"`
}

// ApprovalsConfig is approvals: how long a request waits for its reviews,
// and how long an approved request waits to be picked up. Zero takes the
// broker's defaults (1h and 15m).
type ApprovalsConfig struct {
	PendingTTL time.Duration `yaml:"pending_ttl"`
	PickupTTL  time.Duration `yaml:"pickup_ttl"`

	At strictyaml.Pos `yaml:",pos"`
}

// AutoPauseConfig is auto_pause: an agent denied Denials times within
// Window is paused (an audited pause event, notified like any other).
// Absent, agents are never paused automatically.
type AutoPauseConfig struct {
	Denials int           `yaml:"denials"`
	Window  time.Duration `yaml:"window"`

	At strictyaml.Pos `yaml:",pos"`
}

// Enabled reports whether auto_pause is configured.
func (a AutoPauseConfig) Enabled() bool { return !a.At.IsZero() }

// NotifyConfig is notify:.
type NotifyConfig struct {
	Webhooks []WebhookConfig `yaml:"webhooks"`
	// DeadLetterTTL is how long a delivery that failed for good is kept in
	// the outbox's dead letters. Zero (or absent) takes
	// notify.DefaultDeadLetterTTL, as zero does in approvals:.
	DeadLetterTTL time.Duration `yaml:"dead_letter_ttl"`

	DeadLetterTTLAt strictyaml.Pos `yaml:"dead_letter_ttl,pos"`
}

// minDeadLetterTTL is the shortest notify.dead_letter_ttl: the notifier
// looks for expired dead letters hourly, so a shorter one would not be
// what it says.
const minDeadLetterTTL = time.Hour

// WebhookConfig is one webhook: events are POSTed to URL as JSON.
type WebhookConfig struct {
	URL string `yaml:"url"`
	// Events are the event types sent; absent, notify.DefaultEvents.
	Events []string `yaml:"events"`
	// SecretFile holds an HMAC key to sign deliveries with, if set.
	SecretFile string `yaml:"secret_file"`
	// Slack sends {"text": ...} for a Slack-compatible incoming webhook.
	Slack bool `yaml:"slack"`

	At       strictyaml.Pos `yaml:",pos"`
	URLAt    strictyaml.Pos `yaml:"url,pos"`
	EventsAt strictyaml.Pos `yaml:"events,pos"`
}

// TelemetryConfig is telemetry:, how latch links to the agents' traces.
type TelemetryConfig struct {
	// TraceURL is a link template with {trace_id}: the console links a
	// request's trace ID with it.
	TraceURL   string         `yaml:"trace_url"`
	TraceURLAt strictyaml.Pos `yaml:"trace_url,pos"`
	// OTLPEndpoint, when set, is where latch exports its spans
	// (OTLP over HTTP, such as http://collector:4318/v1/traces).
	OTLPEndpoint   string         `yaml:"otlp_endpoint"`
	OTLPEndpointAt strictyaml.Pos `yaml:"otlp_endpoint,pos"`
}

// Defaults applied before the file.
const (
	defaultListen        = "127.0.0.1:8443"
	defaultMetricsListen = "127.0.0.1:9102"
	defaultTemplatesDir  = "templates"
)

// LoadConfig reads, validates and compiles the config at path and the
// templates in its templates_dir. It is the one loading path: `latch check`
// and `latch server` both call it. The error lists every problem, one
// "file:line:col: message" per line (a strictyaml.Errors).
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cfg := &Config{
		File: path,
		Server: ServerConfig{Listen: defaultListen, MetricsListen: defaultMetricsListen,
			ReadTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 16 << 10, MaxConnections: 1024,
			MaxEventStreams: 64, MaxEventStreamsPerCaller: 4},
		TemplatesDir: defaultTemplatesDir,
		Refusals:     RefusalsConfig{PerCaller: 60, AuditEach: 10, Window: time.Minute},
		Audit:        AuditConfig{CheckpointEvery: 1000, CheckpointInterval: time.Minute},
	}
	var errs strictyaml.Errors
	if err := strictyaml.Unmarshal(path, data, cfg); err != nil {
		errs.Add(err)
		if errs.Syntax() {
			return nil, errs.Err()
		}
	}
	errs = append(errs, cfg.validate()...)
	// The backends: section is checked, type by type, by the one list of
	// backend types the server builds from.
	backends, err := catalog.Decode(cfg.Backends)
	errs.Add(err)
	cfg.backends = backends
	cfg.resolvePaths()
	var files []templates.File
	if fi, err := os.Stat(cfg.TemplatesDir); err != nil || !fi.IsDir() {
		reason := "not a directory"
		var pe *os.PathError
		if errors.As(err, &pe) {
			reason = pe.Err.Error()
		} else if err != nil {
			reason = err.Error()
		}
		errs = append(errs, cfg.at(cfg.TemplatesDirAt).Errorf("templates_dir: cannot read %s: %s", cfg.TemplatesDir, reason))
	} else if files, err = templates.ReadDir(cfg.TemplatesDir); err != nil {
		errs = append(errs, cfg.at(cfg.TemplatesDirAt).Errorf("templates_dir: %v", err))
	}
	pol, err := templates.Load(templates.Source{Policy: cfg.PolicyConfig, Templates: files, Backends: backends.Templates()})
	errs.Add(err)
	if err := errs.Err(); err != nil {
		return nil, err
	}
	cfg.Policy = pol
	return cfg, nil
}

// at returns p, or the start of the file for keys that are absent.
func (c *Config) at(p strictyaml.Pos) strictyaml.Pos {
	if p.IsZero() {
		return strictyaml.Pos{File: c.File, Line: 1, Col: 1}
	}
	return p
}

// validate checks the non-policy sections.
func (c *Config) validate() strictyaml.Errors {
	var errs strictyaml.Errors
	add := func(p strictyaml.Pos, format string, args ...any) {
		errs = append(errs, c.at(p).Errorf(format, args...))
	}
	s := c.Server
	switch {
	case s.ID == "":
		add(configOr(s.At, c.ServerAt), "server.id is required (latch's own SPIFFE ID, such as spiffe://example.org/latch)")
	default:
		if _, err := spiffeid.FromString(s.ID); err != nil {
			add(s.IDAt, "server.id: invalid SPIFFE ID %q: %v", s.ID, err)
		}
	}
	for _, l := range []struct {
		key, addr string
		at        strictyaml.Pos
	}{{"listen", s.Listen, s.ListenAt}, {"metrics_listen", s.MetricsListen, s.MetricsListenAt}} {
		if _, port, err := net.SplitHostPort(l.addr); err != nil || port == "" {
			add(l.at, "server.%s: expected host:port, such as 127.0.0.1:8443, got %q", l.key, l.addr)
		}
	}
	if s.Listen == s.MetricsListen && s.Listen != "" {
		add(s.MetricsListenAt, "server.metrics_listen: must differ from server.listen")
	}
	errs = append(errs, c.validateLimits()...)

	sp := c.SPIFFE
	files := sp.SVIDCert != "" || sp.SVIDKey != "" || sp.Bundle != ""
	switch {
	case sp.WorkloadAPI != "" && files:
		add(configOr(sp.At, c.SPIFFEAt), "spiffe: set workload_api, or svid_cert, svid_key and bundle, not both")
	case sp.WorkloadAPI != "":
		if !strings.HasPrefix(sp.WorkloadAPI, "unix://") && !strings.HasPrefix(sp.WorkloadAPI, "tcp://") {
			add(sp.WorkloadAPIAt, "spiffe.workload_api: expected unix:///path or tcp://host:port, got %q", sp.WorkloadAPI)
		}
	case files:
		var missing []string
		for _, f := range []struct{ k, v string }{{"svid_cert", sp.SVIDCert}, {"svid_key", sp.SVIDKey}, {"bundle", sp.Bundle}} {
			if f.v == "" {
				missing = append(missing, f.k)
			}
		}
		if len(missing) > 0 {
			add(configOr(sp.At, c.SPIFFEAt), "spiffe: %s missing; file-based SVIDs need svid_cert, svid_key and bundle", strings.Join(missing, ", "))
		}
	default:
		add(configOr(sp.At, c.SPIFFEAt), "spiffe: set workload_api, or svid_cert, svid_key and bundle")
	}

	c.validateStore(add)

	v := c.Vault
	if v.Address == "" {
		add(configOr(v.At, c.VaultAt), "vault.address is required, such as https://127.0.0.1:8200")
	} else if u, err := url.Parse(v.Address); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		add(v.AddressAt, "vault.address: expected an http(s) URL, got %q", v.Address)
	}
	a := v.Auth
	authAt := configOr(a.At, configOr(v.AuthAt, configOr(v.At, c.VaultAt)))
	used := map[string]string{"token_file": a.TokenFile, "role_id_file": a.RoleIDFile, "secret_id_file": a.SecretIDFile, "role": a.Role}
	var need []string
	switch a.Method {
	case "":
		add(authAt, "vault.auth.method is required; allowed: token, approle, jwt")
	case VaultAuthToken:
		need = []string{"token_file"}
	case VaultAuthAppRole:
		need = []string{"role_id_file", "secret_id_file"}
	case VaultAuthJWT:
		need = []string{"role"}
	default:
		add(a.MethodAt, "vault.auth.method: unknown method %q; allowed: token, approle, jwt", a.Method)
	}
	if need != nil {
		for _, k := range need {
			if used[k] == "" {
				add(authAt, "vault.auth.%s is required with method %s", k, a.Method)
			}
		}
		for _, k := range sortedKeys(used) {
			if used[k] != "" && !slices.Contains(need, k) {
				add(authAt, "vault.auth.%s is not used by method %s", k, a.Method)
			}
		}
	}

	c.validateNotify(add)
	c.validateConsole(add)
	c.validateTelemetry(add)
	if ap := c.AutoPause; ap.Enabled() && (ap.Denials < 1 || ap.Window <= 0) {
		add(ap.At, "auto_pause: needs denials ≥ 1 and a window > 0, such as { denials: 5, window: 10m }; leave auto_pause out to never pause automatically")
	}
	if c.TemplatesDir == "" {
		add(c.TemplatesDirAt, "templates_dir must not be empty")
	}
	return errs
}

// validateTelemetry checks telemetry:'s URLs.
func (c *Config) validateTelemetry(add func(p strictyaml.Pos, format string, args ...any)) {
	if u := c.Telemetry.OTLPEndpoint; u != "" {
		if pu, err := url.Parse(u); err != nil || (pu.Scheme != "https" && pu.Scheme != "http") || pu.Host == "" {
			add(c.Telemetry.OTLPEndpointAt, "telemetry.otlp_endpoint: expected the OTLP/HTTP traces URL, such as http://127.0.0.1:4318/v1/traces, got %q", u)
		}
	}
	if u := c.Telemetry.TraceURL; u != "" {
		if pu, err := url.Parse(strings.ReplaceAll(u, "{trace_id}", "x")); err != nil || (pu.Scheme != "https" && pu.Scheme != "http") || !strings.Contains(u, "{trace_id}") {
			add(c.Telemetry.TraceURLAt, "telemetry.trace_url: expected an http(s) link with {trace_id} in it, such as https://jaeger.example.org/trace/{trace_id}, got %q", u)
		}
	}
}

// validateNotify checks notify:; add records an error as validate does.
// validateStore checks store:: exactly one of path and etcd, and what
// etcd needs.
func (c *Config) validateStore(add func(p strictyaml.Pos, format string, args ...any)) {
	switch st := c.Store; {
	case st.Path == "" && st.Etcd == nil:
		add(configOr(st.At, c.StoreAt), "store.path is required (the bbolt database file), or store.etcd for replicas on etcd")
	case st.Path != "" && st.Etcd != nil:
		add(st.EtcdAt, "store: set path or etcd, not both")
	case st.Etcd != nil:
		e := st.Etcd
		switch {
		case len(e.Endpoints) == 0:
			add(st.EtcdAt, "store.etcd.endpoints is required, such as [https://etcd-1:2379]")
		case (e.Cert == "") != (e.Key == ""):
			add(st.EtcdAt, "store.etcd: cert and key go together")
		case e.KeepEnded < 0:
			add(st.EtcdAt, "store.etcd.keep_ended must not be negative")
		case e.Prefix != "" && !strings.HasPrefix(e.Prefix, "/"):
			add(st.EtcdAt, "store.etcd.prefix %q must start with /", e.Prefix)
		case st.Outbox == "" && len(c.Notify.Webhooks) > 0:
			add(st.EtcdAt, "store.outbox is required with store.etcd and webhooks: the outbox is a file of this server's own")
		}
	}
}

func (c *Config) validateNotify(add func(p strictyaml.Pos, format string, args ...any)) {
	for i, w := range c.Notify.Webhooks {
		if w.URL == "" {
			add(w.At, "notify.webhooks[%d]: url is required", i)
		} else if u, err := url.Parse(w.URL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			add(w.URLAt, "notify.webhooks[%d].url: expected an http(s) URL, got %q", i, w.URL)
		}
		if !w.EventsAt.IsZero() && len(w.Events) == 0 {
			add(w.EventsAt, "notify.webhooks[%d].events: empty; leave the key out to get the default events (%s)", i, strings.Join(notify.DefaultEvents, ", "))
		}
		for _, e := range w.Events {
			if !slices.Contains(notify.KnownEvents, e) {
				add(configOr(w.EventsAt, w.At), "notify.webhooks[%d].events: unknown event type %q; known: %s", i, e, strings.Join(notify.KnownEvents, ", "))
			}
		}
	}
	// Zero is the default; it is also what a value that is no duration
	// decodes to, which strictyaml has reported already.
	if n := c.Notify; n.DeadLetterTTL != 0 && n.DeadLetterTTL < minDeadLetterTTL {
		add(n.DeadLetterTTLAt, "notify.dead_letter_ttl: %s is shorter than %s (expired dead letters are deleted hourly); leave it out for the default, %s",
			n.DeadLetterTTL, minDeadLetterTTL, notify.DefaultDeadLetterTTL)
	}
}

// resolvePaths makes file paths relative to the config file's directory.
func (c *Config) resolvePaths() {
	base := filepath.Dir(c.File)
	for _, p := range []*string{
		&c.TemplatesDir, &c.Store.Path, &c.Store.Outbox, &c.Server.AdminSocket, &c.Audit.CheckpointFile,
		&c.SPIFFE.SVIDCert, &c.SPIFFE.SVIDKey, &c.SPIFFE.Bundle,
		&c.Vault.CACert, &c.Vault.Auth.TokenFile, &c.Vault.Auth.RoleIDFile, &c.Vault.Auth.SecretIDFile,
	} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
	for _, p := range c.consolePaths() {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
	for i := range c.Notify.Webhooks {
		if p := &c.Notify.Webhooks[i].SecretFile; *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
	if e := c.Store.Etcd; e != nil {
		for _, p := range []*string{&e.CACert, &e.Cert, &e.Key} {
			if *p != "" && !filepath.IsAbs(*p) {
				*p = filepath.Join(base, *p)
			}
		}
	}
}

func configOr(p, fallback strictyaml.Pos) strictyaml.Pos {
	if p.IsZero() {
		return fallback
	}
	return p
}

// sortedKeys returns the keys of m in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// validateLimits checks server:'s connection limits: each must be
// positive (jwt_replay_cache may be 0, off), and not so small that latch
// would refuse its own clients.
func (c *Config) validateLimits() strictyaml.Errors {
	s, at := c.Server, c.Server.LimitsAt
	var errs strictyaml.Errors
	for _, d := range []struct {
		key string
		v   time.Duration
		at  strictyaml.Pos
	}{{"read_timeout", s.ReadTimeout, at.ReadTimeout}, {"idle_timeout", s.IdleTimeout, at.IdleTimeout}} {
		if d.v < time.Second {
			errs = append(errs, c.at(d.at).Errorf("server.%s: %s is too short, want at least 1s", d.key, d.v))
		}
	}
	for _, n := range []struct {
		key    string
		v, min int
		at     strictyaml.Pos
	}{{"max_header_bytes", s.MaxHeaderBytes, 4 << 10, at.MaxHeaderBytes}, {"max_connections", s.MaxConnections, 16, at.MaxConnections},
		{"max_event_streams", s.MaxEventStreams, 1, at.MaxEventStreams},
		{"max_event_streams_per_caller", s.MaxEventStreamsPerCaller, 1, at.MaxEventStreamsPerCaller},
		{"jwt_replay_cache", s.JWTReplayCache, 0, at.JWTReplayCache}} {
		if n.v < n.min {
			errs = append(errs, c.at(n.at).Errorf("server.%s: %d is too small, want at least %d", n.key, n.v, n.min))
		}
	}
	if r := c.Refusals; r.PerCaller < 1 || r.AuditEach < 1 || r.Window < time.Second {
		errs = append(errs, c.at(configOr(r.At, c.RefusalsAt)).Errorf("refusals: per_caller and audit_each must be ≥ 1 and window ≥ 1s (defaults 60, 10, 1m), got %d, %d, %s",
			r.PerCaller, r.AuditEach, r.Window))
	}
	if a := c.Audit; a.CheckpointEvery < 1 || a.CheckpointInterval < time.Second {
		errs = append(errs, c.at(configOr(a.At, c.AuditAt)).Errorf("audit: checkpoint_every must be ≥ 1 and checkpoint_interval ≥ 1s (defaults 1000, 1m), got %d, %s",
			a.CheckpointEvery, a.CheckpointInterval))
	}
	if s.MaxEventStreamsPerCaller > s.MaxEventStreams {
		errs = append(errs, c.at(at.MaxEventStreamsPerCaller).Errorf("server.max_event_streams_per_caller: %d is more than max_event_streams (%d)",
			s.MaxEventStreamsPerCaller, s.MaxEventStreams))
	}
	return errs
}
