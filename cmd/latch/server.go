package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/urfave/cli/v2"
	"golang.org/x/net/netutil"

	"github.com/latchbroker/latch/attest"
	"github.com/latchbroker/latch/backends/vault"
	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/boltstore"
	"github.com/latchbroker/latch/broker/httpapi"
	"github.com/latchbroker/latch/broker/promstats"
	"github.com/latchbroker/latch/console"
	"github.com/latchbroker/latch/notify"
)

func serverCommand() *cli.Command {
	return &cli.Command{
		Name:      "server",
		Usage:     "run the broker: agent and operator API, admin socket, metrics",
		UsageText: "latch server --config FILE",
		Description: "Starts in order: the lease store, latch's own SPIFFE identity, the Vault\n" +
			"login, restart reconciliation (every interrupted issue completed or revoked,\n" +
			"leases that expired while latch was down revoked), then the listeners.\n" +
			"SIGHUP reloads the policy (operators, agents, freeze_windows, risk_tiers)\n" +
			"and the templates; a bad reload keeps the running config, and the other\n" +
			"sections (server, spiffe, store, vault, backends, notify, approvals,\n" +
			"auto_pause) take effect at the next start. SIGINT or SIGTERM shut down\n" +
			"gracefully.\n\n" +
			"With store.etcd, every server on a prefix serves (replicas, active-active);\n" +
			"one at a time runs the background duties (expiry, the revocation queue,\n" +
			"reconciliation, approval expiry, policy collection, checkpoints, auto-pause,\n" +
			"webhooks), elected through etcd, and another takes them over within 10 s\n" +
			"of its end. A replica that loses its etcd session stops: restart it.\n\n" +
			"Webhook deliveries are kept in store.outbox (default <store.path>.outbox)\n" +
			"until delivered; one that fails is retried on its own backoff while later\n" +
			"ones go on, and after 30 attempts it is a dead letter, deleted after\n" +
			"notify.dead_letter_ttl (default 720h, 30 days).",
		Flags:  []cli.Flag{configFlagFor()},
		Action: runServer,
	}
}

func runServer(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	setGC()
	log := slog.New(slog.NewJSONHandler(c.App.ErrWriter, nil))
	cfg, err := LoadConfig(c.String("config"))
	if err != nil {
		return printConfigErrors(c, err)
	}
	srv, err := OpenServer(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer srv.Close()

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				srv.Reload(ctx, c.String("config"))
			}
		}
	}()
	return srv.Run(ctx)
}

// serverGOGC is the server's GC target unless GOGC is set. latch's live
// heap is small (the store is a mapped file, not heap) while an issue
// allocates about 100 KB that dies with it, so at Go's default of 100 the
// collector runs every few hundred issues: at 400 latch spends 6-10% less
// CPU per issue for about 20 MB more resident memory (make profile).
const serverGOGC = 400

func setGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(serverGOGC)
	}
}

// promstats takes backends/vault's Metrics by its method set alone.
var _ vault.Metrics = (*promstats.Metrics)(nil)

// Server is a running latch: everything `latch server` opens, in the order
// it opens it.
type Server struct {
	cfg      *Config
	log      *slog.Logger
	store    broker.Store // *boltstore.Store or *etcdStore
	source   *attest.Source
	vault    *vault.Client
	service  *broker.Service
	verifier *attest.Verifier
	metrics  *promstats.Metrics
	notifier *notify.Notifier // nil without webhooks
	console  *console.Console // nil without console:
	// stopTracing flushes and stops the span export (telemetry.otlp_endpoint).
	stopTracing func(context.Context) error

	// Listeners are opened by Run (listen), first thing and before
	// anything is served, so that a bind error fails the start; APIAddr
	// and MetricsAddr report what they bound, once Run has listened.
	apiLn, adminLn, metricsLn, consoleLn net.Listener

	ready    chan struct{} // closed once reconciliation is done
	backends map[string]broker.Backend
	setupErr atomic.Pointer[string] // what latch's Vault setup lacks; nil once complete (watchSetup)
	runErr   chan error
	stopBg   context.CancelFunc
	bg       sync.WaitGroup
	reloadMu sync.Mutex
}

// OpenServer opens the store, latch's SPIFFE identity and the Vault client
// (and logs in, so bad Vault credentials fail here), builds the backends,
// the service and the webhook notifier, and records the config's policy
// with the service. It opens no listener and serves nothing: Run binds
// the listeners first, then starts reconciliation and serves (/readyz
// answers ready once reconciliation is done). On error, whatever was
// opened is closed.
func OpenServer(ctx context.Context, cfg *Config, log *slog.Logger) (s *Server, err error) {
	s = &Server{cfg: cfg, log: log, ready: make(chan struct{}), runErr: make(chan error, 2), metrics: promstats.New()} // two senders: reconciliation, the etcd session
	unchecked := "latch has not checked its Vault setup yet"
	s.setupErr.Store(&unchecked)
	defer func() {
		if err != nil {
			s.Close()
			s = nil
		}
	}()
	serverID, err := spiffeid.FromString(cfg.Server.ID)
	if err != nil {
		return nil, fmt.Errorf("server.id: %w", err)
	}
	host, _ := os.Hostname()
	if s.stopTracing, err = startTracing(ctx, cfg.Telemetry.OTLPEndpoint, fmt.Sprintf("%s-%d", host, os.Getpid())); err != nil {
		return nil, err
	}
	if s.store, err = openStore(ctx, cfg, log); err != nil {
		return nil, err
	}
	if s.source, err = openSource(ctx, cfg, serverID, log); err != nil {
		return nil, err
	}
	s.verifier, err = attest.NewVerifier(attest.Config{ID: serverID, TrustDomains: []spiffeid.TrustDomain{serverID.TrustDomain()},
		X509Bundles: s.source, JWTBundles: s.source, ReplayCacheSize: cfg.Server.JWTReplayCache})
	if err != nil {
		return nil, err
	}
	if s.vault, err = openVault(ctx, cfg, log, s.metrics, s.vaultJWT); err != nil {
		return nil, err
	}
	if s.backends, err = cfg.backends.Build(s.vault); err != nil {
		return nil, err
	}
	if err := s.openService(ctx, cfg, s.backends); err != nil {
		return nil, err
	}
	if err := s.openConsole(cfg); err != nil {
		return nil, err
	}
	// The drift record: every load names each template's version.
	if err := s.service.SetPolicy(ctx, cfg.Policy, "latch"); err != nil {
		return nil, err
	}
	return s, nil
}

// openService builds the service and the webhook notifier on the store;
// on etcd, as one replica among others.
func (s *Server) openService(ctx context.Context, cfg *Config, backends map[string]broker.Backend) (err error) {
	bc := broker.Config{Store: s.store, Policy: cfg.Policy, Backends: backends,
		Logger: s.log, Metrics: s.metrics, ApprovalTTL: cfg.Approvals.PendingTTL, PickupTTL: cfg.Approvals.PickupTTL,
		CoalesceAfter: cfg.Refusals.AuditEach, CoalesceWindow: cfg.Refusals.Window}
	var handoff notify.Handoff
	if es, ok := s.store.(*etcdStore); ok {
		bc.Replica, bc.LiveReplicas = es.replica, es.liveReplicas
		bc.KeepEnded = cmp.Or(cfg.Store.Etcd.KeepEnded, defaultKeepEnded)
		handoff = es.handoff()
	}
	if s.service, err = broker.NewService(ctx, bc); err != nil {
		return err
	}
	s.notifier, err = newNotifier(cfg, s.log, s.metrics, handoff)
	return err
}

// openSource opens latch's own SPIFFE identity: from the Workload API or
// from files.
func openSource(ctx context.Context, cfg *Config, id spiffeid.ID, log *slog.Logger) (*attest.Source, error) {
	var src *attest.Source
	var err error
	if cfg.SPIFFE.WorkloadAPI != "" {
		src, err = attest.OpenWorkloadAPI(ctx, attest.WorkloadAPIConfig{Addr: cfg.SPIFFE.WorkloadAPI, ID: id, Logger: log})
	} else {
		src, err = attest.OpenFiles(attest.FilesConfig{CertFile: cfg.SPIFFE.SVIDCert, KeyFile: cfg.SPIFFE.SVIDKey,
			BundleFile: cfg.SPIFFE.Bundle, JWTBundleFile: cfg.SPIFFE.Bundle, Logger: log})
	}
	if err != nil {
		return nil, fmt.Errorf("spiffe: %w", err)
	}
	return src, nil
}

// openVault builds latch's Vault client from the config and logs in, so
// bad Vault credentials fail here; jwt is latch's JWT-SVID for JWT auth.
func openVault(ctx context.Context, cfg *Config, log *slog.Logger, metrics vault.Metrics, jwt vault.JWTSource) (*vault.Client, error) {
	v, err := vault.New(vault.Config{
		Owner:     cfg.Server.ID,
		Address:   cfg.Vault.Address,
		CACert:    cfg.Vault.CACert,
		Namespace: cfg.Vault.Namespace,
		Logger:    log,
		Metrics:   metrics,
		Auth: vault.AuthConfig{
			Method: cfg.Vault.Auth.Method, TokenFile: cfg.Vault.Auth.TokenFile,
			RoleIDFile: cfg.Vault.Auth.RoleIDFile, SecretIDFile: cfg.Vault.Auth.SecretIDFile,
			Role: cfg.Vault.Auth.Role, Mount: cfg.Vault.Auth.Mount,
			JWT: jwt,
		},
	})
	if err != nil {
		return nil, err
	}
	if err := v.Login(ctx); err != nil {
		v.Close()
		return nil, fmt.Errorf("vault login: %w", err)
	}
	return v, nil
}

// vaultJWT is latch's own JWT-SVID for Vault's JWT auth, audience "vault".
func (s *Server) vaultJWT(ctx context.Context) (string, error) {
	svid, err := s.source.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "vault"})
	if err != nil {
		return "", err
	}
	return svid.Marshal(), nil
}

// Run keeps latch's Vault token alive, reconciles, serves until ctx ends,
// then shuts down gracefully: in-flight requests get a deadline to finish
// (an issuance that cannot deliver its secret revokes it).
func (s *Server) Run(ctx context.Context) error {
	if err := s.listen(); err != nil {
		return err
	}
	var pauser *notify.AutoPause
	if ap := s.cfg.AutoPause; ap.Enabled() {
		var err error
		if pauser, err = notify.NewAutoPause(notify.AutoPauseConfig{Threshold: ap.Denials, Window: ap.Window, Logger: s.log}); err != nil {
			return fmt.Errorf("auto_pause: %w", err)
		}
	}
	bgCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.stopBg = cancel
	s.runBackground(bgCtx, pauser)

	sc := s.cfg.Server
	api, err := httpapi.New(httpapi.Config{Service: s.service, Verifier: s.verifier, Logger: s.log, Metrics: s.metrics, Ready: s.Ready,
		MaxEventStreams: sc.MaxEventStreams, MaxEventStreamsPerCaller: sc.MaxEventStreamsPerCaller, RefusalsPerCaller: s.cfg.Refusals.PerCaller})
	if err != nil {
		return err
	}
	tlsConfig, err := s.verifier.ServerTLSConfig(s.source)
	if err != nil {
		return err
	}
	servers := []*http.Server{
		{Handler: api, TLSConfig: tlsConfig, ReadHeaderTimeout: min(10*time.Second, sc.ReadTimeout), ReadTimeout: sc.ReadTimeout,
			IdleTimeout: sc.IdleTimeout, MaxHeaderBytes: sc.MaxHeaderBytes, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)},
		{Handler: s.metricsMux(), ReadHeaderTimeout: 10 * time.Second},
	}
	serveErr := make(chan error, 4)
	go func() { serveErr <- servers[0].ServeTLS(netutil.LimitListener(s.apiLn, sc.MaxConnections), "", "") }()
	go func() { serveErr <- servers[1].Serve(s.metricsLn) }()
	if s.adminLn != nil {
		admin, err := httpapi.New(httpapi.Config{Service: s.service, AdminSocket: true, Logger: s.log, Metrics: s.metrics, Ready: s.Ready})
		if err != nil {
			return err
		}
		as := &http.Server{Handler: admin, ReadHeaderTimeout: 10 * time.Second}
		servers = append(servers, as)
		go func() { serveErr <- as.Serve(s.adminLn) }()
	}
	if s.console != nil {
		cs, err := s.serveConsole(serveErr)
		if err != nil {
			return err
		}
		servers = append(servers, cs)
	}
	s.log.Info("listening", "api", s.apiLn.Addr().String(), "metrics", s.metricsLn.Addr().String(), "admin_socket", s.cfg.Server.AdminSocket)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-s.runErr:
	case err := <-serveErr:
		runErr = fmt.Errorf("serve: %w", err)
	}
	s.log.Info("shutting down")
	shutdownCtx, cancelShutdown := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancelShutdown()
	for _, srv := range servers {
		_ = srv.Shutdown(shutdownCtx)
	}
	return runErr
}

// listen opens the API, metrics and admin listeners before anything is
// served, so that a bad address fails the start.
func (s *Server) listen() error {
	var err error
	if s.apiLn, err = net.Listen("tcp", s.cfg.Server.Listen); err != nil {
		return fmt.Errorf("server.listen: %w", err)
	}
	if s.metricsLn, err = net.Listen("tcp", s.cfg.Server.MetricsListen); err != nil {
		return fmt.Errorf("server.metrics_listen: %w", err)
	}
	if s.console != nil {
		if s.consoleLn, err = net.Listen("tcp", s.cfg.Console.Listen); err != nil {
			return fmt.Errorf("console.listen: %w", err)
		}
	}
	if p := s.cfg.Server.AdminSocket; p != "" {
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return fmt.Errorf("server.admin_socket: %w", err)
		}
		if s.adminLn, err = httpapi.ListenUnix(p); err != nil {
			return fmt.Errorf("server.admin_socket: %w", err)
		}
	}
	return nil
}

// APIAddr and MetricsAddr are the bound addresses, once Run has listened.
func (s *Server) APIAddr() string     { return s.apiLn.Addr().String() }
func (s *Server) MetricsAddr() string { return s.metricsLn.Addr().String() }

// metricsMux serves /metrics, /healthz and /readyz on the metrics listener.
func (s *Server) metricsMux() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", s.metrics.Handler())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := s.Ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	if s.cfg.Server.Pprof {
		servePprof(mux)
	}
	return mux
}

// servePprof adds net/http/pprof's handlers to mux (server.pprof).
func servePprof(mux *http.ServeMux) {
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
}

// Ready reports nil once reconciliation has finished and latch's Vault
// setup is complete (watchSetup).
func (s *Server) Ready() error {
	if e := s.setupErr.Load(); e != nil {
		return errors.New(*e)
	}
	select {
	case <-s.ready:
		return nil
	default:
		return errors.New("reconciliation has not finished")
	}
}

// Reload loads the config file again and swaps the policy in atomically;
// a config that does not load is logged and the running one kept.
func (s *Server) Reload(ctx context.Context, path string) {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	cfg, err := LoadConfig(path)
	if err != nil {
		s.log.Error("config reload failed; keeping the running config", "file", path, "err", err)
		return
	}
	if err := s.service.SetPolicy(ctx, cfg.Policy, "latch"); err != nil {
		s.log.Error("config reload refused; keeping the running config", "file", path, "err", err)
		return
	}
	s.log.Info("config reloaded", "file", path, "templates", len(cfg.Policy.Templates()))
}

// Close stops the background work and closes in reverse order of open.
func (s *Server) Close() {
	if s.stopBg != nil {
		s.stopBg()
		s.bg.Wait()
	}
	for _, l := range []net.Listener{s.apiLn, s.metricsLn, s.adminLn, s.consoleLn} {
		if l != nil {
			l.Close() // already closed by Shutdown after Run; harmless
		}
	}
	if s.notifier != nil {
		s.notifier.Close()
	}
	if s.stopTracing != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := s.stopTracing(ctx); err != nil {
			s.log.Warn("flush the spans", "err", err)
		}
		cancel()
	}
	if s.vault != nil {
		s.vault.Close()
	}
	if s.source != nil {
		s.source.Close()
	}
	if s.store != nil {
		s.store.Close()
	}
}

// openStore opens store.path (bbolt) or store.etcd; nil on error (not
// a typed nil, which Close would call).
func openStore(ctx context.Context, cfg *Config, log *slog.Logger) (broker.Store, error) {
	if cfg.Store.Etcd != nil {
		es, err := openEtcdStore(ctx, cfg.Store.Etcd, log)
		if err != nil {
			return nil, err
		}
		return es, nil
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Store.Path), 0o700); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	bs, err := boltstore.Open(cfg.Store.Path, boltstore.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, err
	}
	return bs, nil
}

// newNotifier builds the webhook notifier from notify.webhooks; its outbox
// sits beside the store, in a file of its own.
func newNotifier(cfg *Config, log *slog.Logger, metrics notify.Metrics, handoff notify.Handoff) (*notify.Notifier, error) {
	if len(cfg.Notify.Webhooks) == 0 {
		return nil, nil
	}
	var hooks []notify.Webhook
	for i, w := range cfg.Notify.Webhooks {
		h := notify.Webhook{URL: w.URL, Events: w.Events, Slack: w.Slack}
		if w.SecretFile != "" {
			secret, err := os.ReadFile(w.SecretFile)
			if err != nil {
				return nil, fmt.Errorf("notify.webhooks[%d].secret_file: %w", i, err)
			}
			h.Secret = webhookKey(secret)
		}
		hooks = append(hooks, h)
	}
	nc := notify.Config{Webhooks: hooks, OutboxPath: cmp.Or(cfg.Store.Outbox, cfg.Store.Path+".outbox"), DeadLetterTTL: cfg.Notify.DeadLetterTTL,
		Logger: log, Metrics: metrics, Handoff: handoff}
	if cfg.Console != nil {
		nc.ConsoleURL = cfg.Console.URL
	}
	return notify.New(nc)
}

// webhookKey is a secret_file's HMAC key: its contents less one trailing
// newline (as echo SECRET > file leaves), as the README says; nothing
// else is trimmed, so a receiver keyed by the README agrees.
func webhookKey(file []byte) []byte {
	s, ok := strings.CutSuffix(string(file), "\n")
	if ok {
		s = strings.TrimSuffix(s, "\r")
	}
	return []byte(s)
}

// openConsole builds the web console when console: and oidc: are set.
func (s *Server) openConsole(cfg *Config) error {
	cc, on, err := cfg.consoleConfig()
	if err != nil || !on {
		return err
	}
	if cfg.Console.SessionKeyFile == "" {
		s.log.Info("console: no session_key_file, so sessions end when this process stops and no other replica accepts them")
	}
	s.console, err = console.New(cc, s.service, s.log)
	return err
}

// serveConsole serves the console, and under /v1/ the operator API for
// people signed in with latch login, on the console's listener: TLS 1.3
// only, with the certificate console: names.
func (s *Server) serveConsole(serveErr chan<- error) (*http.Server, error) {
	k := s.cfg.Console
	cert, err := tls.LoadX509KeyPair(k.TLSCert, k.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("console: tls_cert and tls_key: %w", err)
	}
	// The operator API, for people signed in with latch login.
	people, err := httpapi.New(httpapi.Config{Service: s.service, People: s.console, Logger: s.log, Metrics: s.metrics, Ready: s.Ready,
		MaxEventStreams: s.cfg.Server.MaxEventStreams, MaxEventStreamsPerCaller: s.cfg.Server.MaxEventStreamsPerCaller,
		RefusalsPerCaller: s.cfg.Refusals.PerCaller})
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/", people)
	mux.Handle("/", s.console)
	srv := &http.Server{Handler: mux, TLSConfig: &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}},
		ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 16 << 10,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}
	go func() {
		serveErr <- srv.ServeTLS(netutil.LimitListener(s.consoleLn, s.cfg.Server.MaxConnections), "", "")
	}()
	s.log.Info("console listening", "addr", s.consoleLn.Addr().String(), "url", k.URL)
	return srv, nil
}
