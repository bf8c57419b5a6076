package httpapi_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/latchbroker/latch/attest"
	"github.com/latchbroker/latch/attest/attesttest"
	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/api"
	"github.com/latchbroker/latch/broker/boltstore"
	"github.com/latchbroker/latch/broker/brokertest"
	"github.com/latchbroker/latch/broker/client"
	"github.com/latchbroker/latch/broker/httpapi"
	"github.com/latchbroker/latch/broker/promstats"
	"github.com/latchbroker/latch/templates"
)

var (
	td       = spiffeid.RequireTrustDomainFromString("example.org")
	otherTD  = spiffeid.RequireTrustDomainFromString("other.org")
	serverID = spiffeid.RequireFromPath(td, "/latch")

	reportBot = spiffeid.RequireFromPath(td, "/agent/report-bot")
	ticketBot = spiffeid.RequireFromPath(td, "/agent/ticket-bot")
	chatty    = spiffeid.RequireFromPath(td, "/agent/chatty")
	hoarder   = spiffeid.RequireFromPath(td, "/agent/hoarder")
	intruder  = spiffeid.RequireFromPath(td, "/intruder")

	viewer   = spiffeid.RequireFromPath(td, "/ops/vera")
	revoker  = spiffeid.RequireFromPath(td, "/ops/rex")
	admin    = spiffeid.RequireFromPath(td, "/ops/ada")
	approver = spiffeid.RequireFromPath(td, "/ops/abe")
)

// canary is the secret the fake backend mints. Only the credentials
// response to the agent that asked may contain it.
const canary = brokertest.Canary

// failingStore fails Apply while fail is set.
type failingStore struct {
	broker.Store
	fail atomic.Bool
}

func (s *failingStore) Apply(ctx context.Context, c broker.Change) ([]broker.Event, error) {
	if s.fail.Load() {
		return nil, fmt.Errorf("injected: %w", broker.ErrStoreUnavailable)
	}
	return s.Store.Apply(ctx, c)
}

// env is one test's latch: a Service on a real bbolt file, the handler
// behind a TLS 1.3 listener configured by attest, and a SPIFFE test CA
// for the callers.
type env struct {
	t        *testing.T
	ca       *attesttest.CA
	other    *attesttest.CA
	svc      *broker.Service
	store    *failingStore
	backend  *brokertest.Backend
	clock    *brokertest.Clock
	metrics  *promstats.Metrics
	handler  *httpapi.Handler
	verifier *attest.Verifier
	url      string
	logs     *brokertest.SyncBuffer
	notReady atomic.Pointer[string]
	// seen collects every body the tests read, for the canary scan.
	seenMu sync.Mutex
	seen   []string
}

func newEnv(t *testing.T, configure ...func(*httpapi.Config)) *env {
	t.Helper()
	e := &env{
		t:       t,
		ca:      attesttest.New(t, td),
		other:   attesttest.New(t, otherTD),
		backend: brokertest.NewBackend(),
		// A Tuesday in March, outside the billing-close window (28th..2nd).
		clock:   brokertest.NewClock(time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)),
		metrics: promstats.New(),
		logs:    &brokertest.SyncBuffer{},
	}
	bs, err := boltstore.Open(filepath.Join(t.TempDir(), "latch.db"), boltstore.Options{Now: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bs.Close() })
	e.store = &failingStore{Store: bs}
	e.svc, err = broker.NewService(context.Background(), broker.Config{
		Store:        e.store,
		Policy:       loadPolicy(t),
		Backends:     map[string]broker.Backend{"fake": e.backend},
		Logger:       slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Metrics:      e.metrics,
		Now:          e.clock.Now,
		AuditTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.verifier, err = attest.NewVerifier(attest.Config{
		ID:          serverID,
		X509Bundles: x509bundle.NewSet(e.ca.X509Bundle(), e.other.X509Bundle()),
		JWTBundles:  jwtbundle.NewSet(e.ca.JWTBundle(), e.other.JWTBundle()),
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg := httpapi.Config{
		Service:  e.svc,
		Verifier: e.verifier,
		Logger:   slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Metrics:  e.metrics,
		Ready: func() error {
			if msg := e.notReady.Load(); msg != nil {
				return errors.New(*msg)
			}
			return nil
		},
		Heartbeat: 100 * time.Millisecond,
	}
	for _, c := range configure {
		c(&cfg)
	}
	e.handler, err = httpapi.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tlsConfig, err := e.verifier.ServerTLSConfig(e.ca.X509SVID(serverID))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(e.handler)
	srv.Listener = tls.NewListener(srv.Listener, tlsConfig)
	srv.Start()
	t.Cleanup(srv.Close)
	e.url = "https://" + srv.Listener.Addr().String()
	return e
}

func loadPolicy(t testing.TB) *templates.Policy {
	return brokertest.LoadTestPolicy(t)
}

// recorder keeps every response body, for the canary scan.
type recorder struct {
	e    *env
	base http.RoundTripper
}

func (r recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.base.RoundTrip(req)
	if err != nil || resp.Header.Get("Content-Type") == "text/event-stream" {
		return resp, err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	r.e.seenMu.Lock()
	r.e.seen = append(r.e.seen, req.Method+" "+req.URL.Path+" → "+string(b))
	r.e.seenMu.Unlock()
	resp.Body = io.NopCloser(bytes.NewReader(b))
	return resp, nil
}

// httpClient returns an *http.Client presenting svid (nil: no client
// certificate) and, if jwt is set, bearer tokens from it.
func (e *env) httpClient(svid *x509svid.SVID, jwt *attest.BearerTransport) *http.Client {
	var src x509svid.Source
	if svid != nil {
		src = svid
	}
	tr := &http.Transport{TLSClientConfig: attest.ClientTLSConfig(src, e.ca.X509Bundle(), serverID), ForceAttemptHTTP2: true}
	var rt http.RoundTripper = tr
	if jwt != nil {
		jwt.Base = tr
		rt = jwt
	}
	return &http.Client{Transport: recorder{e: e, base: rt}}
}

func (e *env) newClient(hc *http.Client) *client.Client {
	c, err := client.New(hc, e.url)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// as returns a client authenticated by an X.509-SVID for id.
func (e *env) as(id spiffeid.ID) *client.Client {
	return e.newClient(e.httpClient(e.ca.X509SVID(id), nil))
}

// asJWT returns a client authenticated by JWT-SVIDs for id.
func (e *env) asJWT(id spiffeid.ID, opts ...attesttest.JWTOption) *client.Client {
	return e.newClient(e.httpClient(nil, &attest.BearerTransport{Source: e.ca.JWTSource(id, opts...), Audience: serverID}))
}

// raw sends a request with any body and headers as id (mTLS) and returns
// the status, headers and body.
func (e *env) raw(id spiffeid.ID, method, path, contentType string, body []byte) (int, http.Header, []byte) {
	e.t.Helper()
	return e.rawWith(e.httpClient(e.ca.X509SVID(id), nil), method, path, contentType, body)
}

func (e *env) rawWith(hc *http.Client, method, path, contentType string, body []byte) (int, http.Header, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.url+path, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := hc.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

// events returns the audit log, verifying its chain.
func (e *env) events() []broker.Event {
	e.t.Helper()
	var out []broker.Event
	var v broker.ChainVerifier
	err := e.store.Events(context.Background(), 0, func(ev broker.Event) (bool, error) {
		if err := v.Next(ev); err != nil {
			return false, err
		}
		out = append(out, ev)
		return true, nil
	})
	if err != nil {
		e.t.Fatalf("audit chain: %v", err)
	}
	return out
}

// issue gets credentials for agent and fails the test otherwise.
func (e *env) issue(agent spiffeid.ID, task, region string) *clientResponse {
	e.t.Helper()
	res, err := e.as(agent).Credentials(context.Background(), credReq(task, region))
	if err != nil {
		e.t.Fatalf("credentials for %s: %v", agent, err)
	}
	return res
}

// metricsText scrapes the metrics handler.
func (e *env) metricsText() string {
	e.t.Helper()
	rec := httptest.NewRecorder()
	e.metrics.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		e.t.Fatalf("/metrics: %d %s", rec.Code, rec.Body)
	}
	return rec.Body.String()
}

// apiError decodes an error envelope.
func apiError(t *testing.T, body []byte) errorBody {
	t.Helper()
	var env struct {
		Error errorBody `json:"error"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&env); err != nil {
		t.Fatalf("error body %q: %v", body, err)
	}
	if env.Error.Reasons == nil {
		t.Fatalf("error body %s: reasons must be an array, even empty", body)
	}
	return env.Error
}

type errorBody struct {
	Code          string    `json:"code"`
	Message       string    `json:"message"`
	Reasons       []string  `json:"reasons"`
	NextAllowedAt time.Time `json:"next_allowed_at"`
	RetryAfter    int       `json:"retry_after"`
	RequestID     string    `json:"request_id"`
}

func spiffeidIn(d spiffeid.TrustDomain, path string) spiffeid.ID {
	return spiffeid.RequireFromPath(d, path)
}

// grep returns the lines of s that contain sub.
func grep(s, sub string) string {
	var out []string
	for line := range strings.SplitSeq(s, "\n") {
		if strings.Contains(line, sub) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

func contextWithTimeout(t *testing.T, d time.Duration) (context.Context, context.CancelFunc) {
	t.Helper()
	return context.WithTimeout(context.Background(), d)
}

// promstatsCount recounts the active leases into the metrics, as
// TrackCounts does periodically.
func promstatsCount(e *env) (map[string]int, error) {
	counts, err := promstats.CountActiveLeases(context.Background(), e.store)
	if err != nil {
		return nil, err
	}
	e.metrics.SetActiveLeases(counts)
	return counts, nil
}

func mapString(m map[string]string) string { return fmt.Sprint(m) }

// bearerClient sends token as it is, however bad.
func (e *env) bearerClient(token string) *http.Client {
	tr := &http.Transport{TLSClientConfig: attest.ClientTLSConfig(nil, e.ca.X509Bundle(), serverID)}
	return &http.Client{Transport: recorder{e: e, base: fixedBearer{base: tr, token: token}}}
}

type fixedBearer struct {
	base  http.RoundTripper
	token string
}

func (f fixedBearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+f.token)
	return f.base.RoundTrip(r)
}

// adminSocket serves the API as the admin socket on a Unix socket of its
// own (in a short temporary path: socket paths are bounded) and returns
// the socket's path, the handler and its server (closed at cleanup).
func (e *env) adminSocket(t *testing.T) (string, http.Handler, *http.Server) {
	t.Helper()
	h, err := httpapi.New(httpapi.Config{Service: e.svc, AdminSocket: true, Logger: slog.New(slog.NewTextHandler(e.logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "latch")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "admin.sock")
	ln, err := httpapi.ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return path, h, srv
}

// within polls cond every 10 ms until it holds (true) or d has passed
// (false): for what the server notices on its own time, such as a client
// that closed its connection.
func within(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// limitedFor says whether err is a 429 with reason among its reasons.
func limitedFor(err error, reason string) bool {
	var ce *client.Error
	return errors.As(err, &ce) && ce.Code == api.CodeLimit && slices.Contains(ce.Reasons, reason)
}
