package httpapi

import (
	"cmp"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"golang.org/x/time/rate"

	"github.com/latchbroker/latch/attest"
	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/api"
)

// AdminSocketActor is the identity of every caller on the admin socket, as
// it appears in audit events.
const AdminSocketActor = broker.AdminSocketActor

// Identifier establishes who sent a request. *attest.Verifier implements
// it; its errors should be *attest.Error (401, or 503 for
// attest.KindUnavailable).
type Identifier interface {
	Identify(r *http.Request) (attest.Identity, error)
}

var _ Identifier = (*attest.Verifier)(nil)

// People identifies people by their latch session (the console's
// listener, where `latch login` sessions call the operator API). A
// refusal is an *attest.Error: 401 with its kind.
type People interface {
	Person(r *http.Request) (*broker.Person, error)
}

// Metrics receives what the handler measures. broker/promstats implements
// it. Methods must be cheap and safe for concurrent use.
type Metrics interface {
	// HTTPRequest observes one request by route pattern (such as
	// "POST /v1/credentials", or "unmatched") and status.
	HTTPRequest(route string, status int, d time.Duration)
	// Refused counts a request refused for the caller's fault (4xx), by
	// its first reason code (latch_refused_total).
	Refused(reason string)
	// Violation counts a refusal whose audit event was not written
	// because refusals of unidentified callers came faster than
	// Config.RefusalAuditRate. (Audited refusals are counted by the
	// Service.)
	Violation(reason string)
}

// Config wires a Handler. Service is required, and so is Verifier unless
// AdminSocket is set.
type Config struct {
	Service *broker.Service
	// Verifier identifies callers (attest.Verifier over TLS 1.3).
	Verifier Identifier
	// AdminSocket makes this the handler of the local admin socket: every
	// caller is the break-glass operator "admin-socket", who may read,
	// revoke, pause, quarantine, resume and freeze, never approve nor
	// request credentials. The socket's file mode (0600, see ListenUnix)
	// is its authentication, so the handler refuses to answer on anything
	// but a unix socket.
	AdminSocket bool
	// People, instead of Verifier, makes the handler one for people
	// signed in with `latch login`: they call the operator routes, never
	// an agent's.
	People People

	Logger  *slog.Logger
	Metrics Metrics
	// Ready reports whether the server is ready to serve (reconciliation
	// finished, Vault answered): /readyz is 200 when it returns nil and
	// 503 with its message otherwise. nil: always ready.
	Ready func() error
	// Now is the clock (time.Now by default).
	Now func() time.Time

	// MaxBodyBytes bounds a request body (default api.MaxBodyBytes).
	MaxBodyBytes int64
	// Heartbeat is how often an idle event stream sends a comment, which
	// keeps proxies from closing it and finds clients that left (default
	// 15 s).
	Heartbeat time.Duration
	// MaxEventStreams bounds the open GET /v1/events streams, and
	// MaxEventStreamsPerCaller those of one identity; past either a new
	// stream gets 429 (defaults 64 and 4).
	MaxEventStreams          int
	MaxEventStreamsPerCaller int
	// RefusalsPerCaller is how many refused requests a minute one caller
	// may make (its burst too) before it gets only 429 too_many_refusals,
	// unevaluated and unaudited, until its budget refills (default 60).
	RefusalsPerCaller int
	// RefusalAuditRate bounds how many refusals of unidentified callers
	// (401) per second are written to the audit log, with a burst of ten
	// times as many; past it they are only counted and logged, so that
	// nobody without a credential can flood the audit log. Default 20.
	RefusalAuditRate float64
}

// Handler is latch's HTTP API. It is safe for concurrent use.
type Handler struct {
	svc       *broker.Service
	verifier  Identifier
	people    People
	admin     bool
	log       *slog.Logger
	metrics   Metrics
	ready     func() error
	now       func() time.Time
	maxBody   int64
	heartbeat time.Duration
	mux       *http.ServeMux

	streams *streamSlots
	budget  *refusalBudget

	refusals   *rate.Limiter
	unaudited  everySecond // refusals of unidentified callers past refusals
	overBudget everySecond // 429 too_many_refusals answers
}

// New checks cfg and returns the handler.
func New(cfg Config) (*Handler, error) {
	switch {
	case cfg.Service == nil:
		return nil, errors.New("httpapi: Config.Service is required")
	case cfg.Verifier == nil && cfg.People == nil && !cfg.AdminSocket:
		return nil, errors.New("httpapi: Config.Verifier is required (or People, or AdminSocket for the admin socket's handler)")
	case cfg.MaxBodyBytes < 0 || cfg.Heartbeat < 0 || cfg.RefusalAuditRate < 0 || cfg.MaxEventStreams < 0 || cfg.MaxEventStreamsPerCaller < 0 || cfg.RefusalsPerCaller < 0:
		return nil, errors.New("httpapi: negative limit in Config")
	}
	h := &Handler{
		svc:       cfg.Service,
		verifier:  cfg.Verifier,
		people:    cfg.People,
		admin:     cfg.AdminSocket,
		log:       cfg.Logger,
		metrics:   cfg.Metrics,
		ready:     cfg.Ready,
		now:       cfg.Now,
		maxBody:   cfg.MaxBodyBytes,
		heartbeat: cfg.Heartbeat,
		mux:       http.NewServeMux(),
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if h.metrics == nil {
		h.metrics = nopMetrics{}
	}
	if h.ready == nil {
		h.ready = func() error { return nil }
	}
	if h.now == nil {
		h.now = time.Now
	}
	if h.maxBody == 0 {
		h.maxBody = api.MaxBodyBytes
	}
	if h.heartbeat == 0 {
		h.heartbeat = 15 * time.Second
	}
	h.budget = newRefusalBudget(cmp.Or(cfg.RefusalsPerCaller, 60))
	h.streams = newStreamSlots(cmp.Or(cfg.MaxEventStreams, 64), cmp.Or(cfg.MaxEventStreamsPerCaller, 4))
	r := cfg.RefusalAuditRate
	if r == 0 {
		r = 20
	}
	h.refusals = rate.NewLimiter(rate.Limit(r), int(10*r)+1)
	h.routes()
	return h, nil
}

type nopMetrics struct{}

func (nopMetrics) HTTPRequest(string, int, time.Duration) {}
func (nopMetrics) Violation(string)                       {}
func (nopMetrics) Refused(string)                         {}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if _, pattern := h.mux.Handler(r); pattern == "" {
		h.unmatched(w, r)
		return
	}
	h.mux.ServeHTTP(w, r)
}

// perm is what a route requires of its caller: the broker.Action that
// broker.Authorize decides on, or permNone for /healthz and /readyz (no
// identity).
type perm = broker.Action

const (
	permNone       perm = ""
	permAgent           = broker.ActionAgent
	permRead            = broker.ActionRead
	permAct             = broker.ActionStop
	permApprove         = broker.ActionApprove
	permDeny            = broker.ActionDeny
	permIdentified      = broker.ActionIdentified
)

// call is one request being served.
type call struct {
	h         *Handler
	w         *statusWriter
	r         *http.Request
	route     string
	requestID string
	who       caller
	errCode   string
}

func (h *Handler) handle(pattern string, p perm, fn func(*call) error) {
	h.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		c := &call{h: h, w: &statusWriter{ResponseWriter: w}, r: r, route: pattern, requestID: newRequestID()}
		c.w.Header().Set("X-Request-Id", c.requestID)
		c.w.Header().Set("Cache-Control", "no-store")
		c.w.Header().Set("X-Content-Type-Options", "nosniff")
		err := h.serve(c, p, fn)
		if err != nil && !c.w.wrote {
			c.writeError(err)
		}
		h.finish(c, start, err)
	})
}

// serve identifies and authorizes the caller, then runs the route.
func (h *Handler) serve(c *call, p perm, fn func(*call) error) error {
	if h.admin && !onUnixSocket(c.r) {
		// Without the socket's file mode there is no authentication at
		// all: never answer an admin-socket handler over the network.
		h.log.Error("the admin-socket handler is served on a listener that is not a unix socket; refusing", "route", c.route)
		return &broker.Error{Code: broker.EINTERNAL, Message: "misconfigured listener"}
	}
	if p != permNone {
		if err := h.identify(c); err != nil {
			return err
		}
		if err := h.authorize(c, p); err != nil {
			return err
		}
	}
	err := fn(c)
	var bad *badRequest
	if errors.As(err, &bad) {
		if aerr := h.svc.Audit().Reject(c.r.Context(), broker.Refusal{Actor: c.who.id, Endpoint: c.route,
			Reason: bad.reason, Message: bad.message, Remote: c.r.RemoteAddr}); aerr != nil {
			h.log.Error("audit a rejected request", "request_id", c.requestID, "err", aerr)
		}
	}
	return err
}

func (h *Handler) finish(c *call, start time.Time, err error) {
	d := time.Since(start)
	status := c.w.status
	if status == 0 {
		status = http.StatusOK
	}
	h.metrics.HTTPRequest(c.route, status, d)
	attrs := []any{"request_id", c.requestID, "route", c.route, "status", status, "duration", d, "caller", c.who.id, "remote", c.r.RemoteAddr}
	switch {
	case status >= 500:
		h.log.Error("request failed", append(attrs, "code", c.errCode, "err", err)...)
	case status == http.StatusTooManyRequests && overBudget(err):
		// Counted and logged when refused (overBudgetAt).
	case status >= 400:
		h.log.Info("request refused", append(attrs, "code", c.errCode, "err", err)...)
	default:
		h.log.Debug("request served", attrs...)
	}
}

// unmatched answers requests no route matches with a JSON 404 or 405.
func (h *Handler) unmatched(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	c := &call{h: h, w: &statusWriter{ResponseWriter: w}, r: r, route: "unmatched", requestID: newRequestID()}
	c.w.Header().Set("X-Request-Id", c.requestID)
	c.w.Header().Set("Cache-Control", "no-store")
	c.w.Header().Set("X-Content-Type-Options", "nosniff")
	// Let the mux say which: it answers 405 with an Allow header when the
	// path exists under other methods.
	probe := &headerCapture{header: http.Header{}}
	mh, _ := h.mux.Handler(r)
	mh.ServeHTTP(probe, r)
	var err error
	if probe.status == http.StatusMethodNotAllowed {
		c.w.Header().Set("Allow", probe.header.Get("Allow"))
		err = &broker.Error{Code: api.CodeMethodNotAllowed, Message: r.Method + " is not allowed on " + truncate(r.URL.Path, 128) + "; allowed: " + probe.header.Get("Allow")}
	} else {
		err = broker.Errorf(broker.ENOTFOUND, "no route %s %s", r.Method, truncate(r.URL.Path, 128))
	}
	c.writeError(err)
	h.finish(c, start, err)
}

// headerCapture records what the mux's own 404/405 handler would send.
type headerCapture struct {
	header http.Header
	status int
}

func (p *headerCapture) Header() http.Header         { return p.header }
func (p *headerCapture) Write(b []byte) (int, error) { return len(b), nil }
func (p *headerCapture) WriteHeader(s int)           { p.status = s }

// statusWriter remembers the status sent.
type statusWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (w *statusWriter) WriteHeader(s int) {
	if !w.wrote {
		w.status, w.wrote = s, true
	}
	w.ResponseWriter.WriteHeader(s)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if !w.wrote {
		w.status, w.wrote = http.StatusOK, true
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection (flushes,
// write deadlines).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// writeJSON sends v with status and flushes it, so that a caller who left
// shows as an error.
func (c *call) writeJSON(status int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		c.h.log.Error("encode a response", "request_id", c.requestID, "err", err)
		b, status = []byte(`{"error":{"code":"internal","message":"internal error","reasons":[]}}`), http.StatusInternalServerError
	}
	b = append(b, '\n')
	c.w.Header().Set("Content-Type", "application/json")
	c.w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	c.w.WriteHeader(status)
	if _, err := c.w.Write(b); err != nil {
		return err
	}
	return http.NewResponseController(c.w).Flush()
}

// decode reads a strict JSON body into v. With optional, an empty body
// leaves v as it is.
func (c *call) decode(v any, optional bool) error {
	body, bad := readBody(c.w, c.r, c.h.maxBody)
	if bad != nil {
		return bad
	}
	if optional && len(body) == 0 {
		return nil
	}
	if bad := checkContentType(c.r); bad != nil {
		return bad
	}
	if bad := decodeJSON(body, v); bad != nil {
		return bad
	}
	return nil
}

// noBody refuses a body on routes that take none.
func (c *call) noBody() error {
	body, bad := readBody(c.w, c.r, c.h.maxBody)
	if bad != nil {
		return bad
	}
	if len(body) > 0 {
		return invalid(reasonUnexpected, "%s takes no request body", c.route)
	}
	return nil
}

func onUnixSocket(r *http.Request) bool {
	_, ok := r.Context().Value(http.LocalAddrContextKey).(*net.UnixAddr)
	return ok
}

func newRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
