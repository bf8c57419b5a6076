package httpapi_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/latchbroker/latch/attest"
	"github.com/latchbroker/latch/attest/attesttest"
	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/api"
	"github.com/latchbroker/latch/broker/brokertest"
	"github.com/latchbroker/latch/broker/client"
	"github.com/latchbroker/latch/broker/httpapi"
)

// TestAPI_Malformed sends bad requests: each gets 400 (413) naming the
// problem, and writes one rejected audit event and nothing else.
func TestAPI_Malformed(t *testing.T) {
	const json = "application/json"
	tests := []struct {
		name   string
		method string
		path   string
		ctype  string
		body   string
		status int
		reason string
		want   string // in the message
	}{
		{"UnknownField", "POST", "/v1/credentials", json, `{"task":"report","params":{"region":"eu"},"scope":"admin"}`, 400, "unknown_field", `unknown field "scope"`},
		{"UnknownFieldCase", "POST", "/v1/credentials", json, `{"Task":"report"}`, 400, "unknown_field", `unknown field "Task"`},
		{"TrailingData", "POST", "/v1/credentials", json, `{"task":"report"} {"task":"x"}`, 400, "trailing_data", "trailing data"},
		{"TrailingGarbage", "POST", "/v1/credentials", json, `{"task":"report"}garbage`, 400, "trailing_data", "trailing data"},
		{"Oversized", "POST", "/v1/credentials", json, `{"task":"report","reason":"` + strings.Repeat("a", 70<<10) + `"}`, 413, "too_large", "larger than 65536 bytes"},
		{"WrongContentType", "POST", "/v1/credentials", "text/plain", `{"task":"report"}`, 400, "content_type", "application/json"},
		{"NoContentType", "POST", "/v1/credentials", "", `{"task":"report"}`, 400, "content_type", "Content-Type is missing"},
		{"Charset", "POST", "/v1/credentials", "application/json; charset=latin1", `{"task":"report"}`, 400, "content_type", "charset"},
		{"Malformed", "POST", "/v1/credentials", json, `{"task":"report",}`, 400, "malformed_json", "malformed JSON at byte"},
		{"Truncated", "POST", "/v1/credentials", json, `{"task":"rep`, 400, "malformed_json", "malformed JSON"},
		{"Empty", "POST", "/v1/credentials", json, ``, 400, "empty_body", "empty"},
		{"Array", "POST", "/v1/credentials", json, `[{"task":"report"}]`, 400, "not_an_object", "must be a JSON object"},
		{"Null", "POST", "/v1/credentials", json, `null`, 400, "not_an_object", "must be a JSON object"},
		{"DuplicateKey", "POST", "/v1/credentials", json, `{"task":"report","task":"admin"}`, 400, "duplicate_key", `duplicate key "task"`},
		{"DuplicateParam", "POST", "/v1/credentials", json, `{"task":"report","params":{"region":"eu","region":"us"}}`, 400, "duplicate_key", `"params"`},
		{"WrongType", "POST", "/v1/credentials", json, `{"task":"report","params":{"region":1}}`, 400, "wrong_type", `field "params.region": want a string, got JSON number`},
		{"TTLNumber", "POST", "/v1/credentials", json, `{"task":"report","ttl":600}`, 400, "wrong_type", `"ttl"`},
		{"TTLNegative", "POST", "/v1/credentials", json, `{"task":"report","ttl":"-5m"}`, 400, "invalid_field", `"ttl"`},
		{"MissingTask", "POST", "/v1/credentials", json, `{"params":{"region":"eu"}}`, 400, "invalid_field", `"task": is required`},
		{"BadRequestID", "POST", "/v1/credentials", json, `{"task":"report","request_id":"a b"}`, 400, "invalid_field", `"request_id"`},
		{"InvalidUTF8", "POST", "/v1/credentials", json, "{\"task\":\"r\xffport\"}", 400, "invalid_utf8", "UTF-8"},
		{"TooDeep", "POST", "/v1/credentials", json, `{"params":{"a":[[[[[[[[[]]]]]]]]]}}`, 400, "too_deep", "nested"},
		{"RevokeNoReason", "POST", "/v1/revoke", json, `{"all":true}`, 400, "invalid_field", `"reason": is required`},
		{"RevokeTwoSelectors", "POST", "/v1/revoke", json, `{"all":true,"task":"report","reason":"x"}`, 400, "invalid_field", "exactly one"},
		{"FreezeWithoutOn", "POST", "/v1/freeze", json, `{"reason":"x"}`, 400, "invalid_field", `"on": is required`},
		{"BadLeaseID", "GET", "/v1/leases/not-a-lease", "", ``, 400, "bad_path", "not a lease ID"},
		{"BadLimit", "GET", "/v1/leases?limit=0", "", ``, 400, "bad_query", "limit"},
		{"UnknownQuery", "GET", "/v1/leases?owner=bob", "", ``, 400, "bad_query", `unknown query parameter "owner"`},
		{"BadState", "GET", "/v1/leases?state=zombie", "", ``, 400, "bad_query", "state"},
		{"BadEventType", "GET", "/v1/audit?type=nope", "", ``, 400, "bad_query", "not an audit event type"},
		{"BadReportAge", "GET", "/v1/report?unused=30days", "", ``, 400, "bad_query", "want whole days such as 30d"},
		{"BodyOnDelete", "DELETE", "/v1/leases/01JZZZZZZZZZZZZZZZZZZZZZZZ", json, `{"x":1}`, 400, "unexpected_body", "takes no request body"},
	}
	e := newEnv(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			caller := admin
			if strings.HasPrefix(tt.path, "/v1/credentials") {
				caller = reportBot
			}
			before := e.events()
			mints := e.backend.Mints.Load()
			status, _, body := e.raw(caller, tt.method, tt.path, tt.ctype, []byte(tt.body))
			if status != tt.status {
				t.Fatalf("status = %d, want %d; body %s", status, tt.status, body)
			}
			b := apiError(t, body)
			if !slices.Equal(b.Reasons, []string{tt.reason}) || !strings.Contains(b.Message, tt.want) {
				t.Fatalf("error = %+v; want reason %s and a message containing %q", b, tt.reason, tt.want)
			}
			evs := e.events()[len(before):]
			if len(evs) != 1 {
				t.Fatalf("%d audit events, want exactly one rejected event: %+v", len(evs), evs)
			}
			ev := evs[0]
			if ev.Type != broker.EventRejected || ev.Actor != caller.String() || ev.Reasons[0] != tt.reason || ev.Details["endpoint"] == "" || ev.Details["message"] == "" {
				t.Fatalf("event = %+v", ev)
			}
			if e.backend.Mints.Load() != mints {
				t.Fatal("a malformed request reached the backend")
			}
			if ls, _ := e.svc.Leases().List(ctx, broker.LeaseFilter{}); len(ls) != 0 {
				t.Fatalf("a malformed request left %d leases", len(ls))
			}
		})
	}
}

// TestAPI_Unauthenticated presents credentials attest refuses: each gets
// 401 naming the kind, and a violation audit event.
func TestAPI_Unauthenticated(t *testing.T) {
	e := newEnv(t)
	now := time.Now()
	tests := []struct {
		name string
		hc   *http.Client
		kind attest.Kind
	}{
		{"ForeignTrustDomain", e.httpClient(e.other.X509SVID(spiffeidIn(otherTD, "/agent/report-bot")), nil), attest.KindForeignTrustDomain},
		{"ExpiredX509", e.httpClient(e.ca.X509SVID(reportBot, attesttest.Expired()), nil), attest.KindExpired},
		{"ExpiredJWT", e.bearerClient(e.ca.JWTSVID(reportBot, []string{serverID.String()},
			attesttest.IssuedAt(now.Add(-10*time.Minute)), attesttest.ExpiresAt(now.Add(-8*time.Minute)))), attest.KindExpired},
		{"WrongAudience", e.httpClient(nil, &attest.BearerTransport{Source: e.ca.JWTSource(reportBot), Audience: spiffeidIn(td, "/vault")}), attest.KindWrongAudience},
		{"ForeignJWT", e.httpClient(nil, &attest.BearerTransport{Source: e.other.JWTSource(spiffeidIn(otherTD, "/agent/x")), Audience: serverID}), attest.KindForeignTrustDomain},
		{"NoCredential", e.httpClient(nil, nil), attest.KindNoCredential},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(e.events())
			status, h, body := e.rawWith(tt.hc, "POST", "/v1/credentials", "application/json", []byte(`{"task":"report","params":{"region":"eu"}}`))
			if status != 401 {
				t.Fatalf("status = %d, want 401; %s", status, body)
			}
			b := apiError(t, body)
			if b.Code != api.CodeUnauthorized || !slices.Equal(b.Reasons, []string{string(tt.kind)}) || b.Message == "" || h.Get("WWW-Authenticate") == "" {
				t.Fatalf("error = %+v, want unauthorized %s", b, tt.kind)
			}
			evs := e.events()[before:]
			if len(evs) != 1 || evs[0].Type != broker.EventViolation || evs[0].Actor != "" || evs[0].Reasons[0] != string(tt.kind) ||
				evs[0].Details["endpoint"] != "POST /v1/credentials" || evs[0].Details["remote"] == "" {
				t.Fatalf("events = %+v, want one violation of kind %s without an actor", evs, tt.kind)
			}
		})
	}
	if m := e.metricsText(); !strings.Contains(m, `latch_violations_total{reason="wrong_audience"} 1`) {
		t.Fatalf("metrics do not count the refusals:\n%s", grep(m, "latch_violations_total"))
	}
	if e.backend.Mints.Load() != 0 {
		t.Fatal("an unauthenticated request reached the backend")
	}
}

// TestAPI_RefusalAuditRate: refusals of unidentified callers beyond the
// audit rate are counted, not written.
func TestAPI_RefusalAuditRate(t *testing.T) {
	e := newEnv(t, func(c *httpapi.Config) { c.RefusalAuditRate = 0.1 }) // burst of 2
	anon := e.httpClient(nil, nil)
	for range 10 {
		if s, _, _ := e.rawWith(anon, "GET", "/v1/leases", "", nil); s != 401 {
			t.Fatalf("status %d", s)
		}
	}
	n := 0
	for _, ev := range e.events() {
		if ev.Type == broker.EventViolation {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("%d violations audited, want the burst of 2", n)
	}
	if m := e.metricsText(); !strings.Contains(m, `latch_violations_total{reason="no_credential"} 10`) {
		t.Fatalf("every refusal must be counted:\n%s", grep(m, "latch_violations_total"))
	}
}

func TestAPI_Events(t *testing.T) {
	e := newEnv(t, func(c *httpapi.Config) { c.MaxEventStreams, c.MaxEventStreamsPerCaller = 4, 3 })
	c, cancel := contextWithTimeout(t, 10*time.Second)
	defer cancel()
	op := e.as(viewer)

	all, err := op.Events(c, api.EventsQuery{})
	if err != nil {
		t.Fatal(err)
	}
	defer all.Close()
	issues, err := op.Events(c, api.EventsQuery{Types: []string{"issue"}, Agent: ticketBot.String()})
	if err != nil {
		t.Fatal(err)
	}
	defer issues.Close()

	e.issue(reportBot, "report", "eu")
	l := e.issue(ticketBot, "report", "us").Lease

	ev, err := all.Next()
	if err != nil {
		t.Fatal(err)
	}
	if ev.Type != "issue" || ev.Actor != reportBot.String() || ev.Hash == "" {
		t.Fatalf("first event = %+v, want report-bot's issue", ev)
	}
	ev, err = issues.Next()
	if err != nil {
		t.Fatal(err)
	}
	if ev.Type != "issue" || ev.Lease != l.ID {
		t.Fatalf("filtered event = %+v, want ticket-bot's issue", ev)
	}

	// Resume from a sequence number: the events after it are replayed.
	resumed, err := op.Events(c, api.EventsQuery{After: ev.Seq - 1})
	if err != nil {
		t.Fatal(err)
	}
	defer resumed.Close()
	got, err := resumed.Next()
	if err != nil || got.Seq != ev.Seq || got.Hash != ev.Hash {
		t.Fatalf("replayed = %+v, %v; want seq %d", got, err, ev.Seq)
	}
	if resumed.LastSeq() != ev.Seq {
		t.Fatalf("LastSeq = %d", resumed.LastSeq())
	}

	// Past MaxEventStreamsPerCaller (three here): 429 for this viewer,
	// while another still gets one, up to MaxEventStreams (four).
	if _, err := op.Events(c, api.EventsQuery{}); !limitedFor(err, "too_many_streams_for_caller") {
		t.Fatalf("a viewer's fourth stream: %v, want too_many_streams_for_caller", err)
	}
	other, err := e.as(admin).Events(c, api.EventsQuery{})
	if err != nil {
		t.Fatalf("another viewer's first stream: %v", err)
	}
	if _, err := e.as(admin).Events(c, api.EventsQuery{}); !limitedFor(err, "too_many_streams") {
		t.Fatalf("a fifth stream: %v, want too_many_streams", err)
	}
	// A closed stream gives its slot back.
	other.Close()
	if !within(5*time.Second, func() bool {
		s, err := e.as(admin).Events(c, api.EventsQuery{})
		if err == nil {
			s.Close()
		}
		return err == nil
	}) {
		t.Fatal("a closed stream did not give its slot back within 5s")
	}

	// A revoker is not a viewer: no stream.
	if _, err := e.as(revoker).Events(c, api.EventsQuery{}); client.Code(err) != api.CodeForbidden {
		t.Fatalf("revoker's event stream: %v", err)
	}
}

// TestAPI_EventsCompleteUnderLoad: a stream that cannot keep up still
// sees every event, once, in order (it refills from the audit log).
func TestAPI_EventsCompleteUnderLoad(t *testing.T) {
	e := newEnv(t)
	c, cancel := contextWithTimeout(t, 30*time.Second)
	defer cancel()
	s, err := e.as(admin).Events(c, api.EventsQuery{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	start, _ := e.svc.Audit().LastSeq(ctx)
	const n = 2 * broker.LiveFeedSize
	for i := range n {
		if err := e.svc.Agents().SetFreeze(ctx, admin.String(), i%2 == 0, "flip"); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		ev, err := s.Next()
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if ev.Seq != start+uint64(i)+1 {
			t.Fatalf("event %d has seq %d, want %d", i, ev.Seq, start+uint64(i)+1)
		}
	}
}

// TestAPI_EventsWire reads the stream as bytes: Last-Event-ID resumes
// after that id, type= filters, comment lines are heartbeats, and an
// audit log that can no longer be read ends the stream with an error
// event.
func TestAPI_EventsWire(t *testing.T) {
	e := newEnv(t, func(c *httpapi.Config) { c.Heartbeat = 20 * time.Millisecond })
	c, cancel := contextWithTimeout(t, 10*time.Second)
	defer cancel()
	for i := range 4 {
		if err := e.svc.Agents().SetFreeze(ctx, admin.String(), i%2 == 0, "flip"); err != nil {
			t.Fatal(err)
		}
	}
	req, err := http.NewRequestWithContext(c, http.MethodGet, e.url+"/v1/events?type=unfreeze", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Last-Event-ID", "2") // 1 and 3 are freezes, 2 and 4 unfreezes
	resp, err := e.httpClient(e.ca.X509SVID(admin), nil).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != http.StatusOK || ct != "text/event-stream" {
		t.Fatalf("status %d, content type %q", resp.StatusCode, ct)
	}
	lines := bufio.NewScanner(resp.Body)
	next := func() string {
		t.Helper()
		if !lines.Scan() {
			t.Fatalf("stream ended: %v", lines.Err())
		}
		return lines.Text()
	}
	for _, want := range []string{": latch audit events", "", "event: unfreeze", "id: 4"} {
		if got := next(); got != want {
			t.Fatalf("line %q, want %q", got, want)
		}
	}
	if got := next(); !strings.HasPrefix(got, `data: {"seq":4,`) || !strings.Contains(got, `"type":"unfreeze"`) {
		t.Fatalf("data line %q", got)
	}
	if got := next() + next(); got != ": keepalive" {
		t.Fatalf("after the event %q, want the blank line and a heartbeat", got)
	}

	e.store.Store.Close() // the follower's next read of the log fails
	// Heartbeats until then; c's deadline bounds the wait.
	for l := next(); l != "event: error"; l = next() {
		if l != "" && l != ": keepalive" {
			t.Fatalf("line %q before the error event", l)
		}
	}
	if got := next(); !strings.HasPrefix(got, `data: {"error":{"code":"unavailable"`) {
		t.Fatalf("error data %q", got)
	}
}

func TestAPI_Metrics(t *testing.T) {
	e := newEnv(t)
	e.issue(reportBot, "report", "eu")
	e.issue(ticketBot, "report", "us")
	e.as(reportBot).Credentials(ctx, credReq("ticket", "x")) // denied: not granted
	op := e.as(admin)
	if _, err := op.Revoke(ctx, api.RevokeRequest{Agent: ticketBot.String(), Reason: "r"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Leases().ProcessRevocations(ctx); err != nil {
		t.Fatal(err)
	}
	counts, err := promstatsCount(e)
	if err != nil {
		t.Fatal(err)
	}
	m := e.metricsText()
	for _, want := range []string{
		`latch_requests_total{outcome="issued",reason=""} 2`,
		`latch_requests_total{outcome="denied",reason="task_not_granted"} 1`,
		`latch_violations_total{reason="task_not_granted"} 1`,
		`latch_issue_duration_seconds_count 2`,
		`latch_revocations_total{result="ok"} 1`,
		`latch_revocation_queue_depth 0`,
		`latch_active_leases{template="report"} 1`,
		`latch_http_requests_total{code="200",route="POST /v1/credentials"} 2`,
		`latch_http_requests_total{code="403",route="POST /v1/credentials"} 1`,
		`latch_audit_append_failures_total 0`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if counts["report"] != 1 {
		t.Errorf("active leases counted = %v", counts)
	}
	if strings.Contains(m, canary) {
		t.Fatal("the secret is in /metrics")
	}
}

// TestAPI_SecretOnlyToItsAgent mints a canary secret and scans everything
// other callers can read — operator responses, the audit page, the event
// stream, /metrics, the logs — for it.
func TestAPI_SecretOnlyToItsAgent(t *testing.T) {
	e := newEnv(t)
	c, cancel := contextWithTimeout(t, 10*time.Second)
	defer cancel()
	stream, err := e.as(admin).Events(c, api.EventsQuery{})
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()

	res := e.issue(reportBot, "report", "eu")
	if res.Secret["password"] != canary {
		t.Fatal("no canary minted")
	}
	e.seenMu.Lock()
	e.seen = nil // the one response that must hold it
	e.seenMu.Unlock()

	op := e.as(admin)
	op.Leases(ctx, api.LeaseQuery{})
	op.Lease(ctx, res.Lease.ID)
	op.Agents(ctx)
	op.Audit(ctx, api.AuditQuery{Limit: 1000})
	op.Revoke(ctx, api.RevokeRequest{All: true, Reason: "scan", DryRun: true})
	e.as(reportBot).Explain(ctx, api.ExplainRequest{Task: "report", Params: map[string]string{"region": "eu"}})
	e.as(reportBot).Renew(ctx, res.Lease.ID, time.Minute)
	e.as(reportBot).Credentials(ctx, api.CredentialsRequest{Task: "report"}) // denied
	e.raw(reportBot, "POST", "/v1/credentials", "application/json", []byte(`{"bad":`))
	ev, err := stream.Next()
	if err != nil {
		t.Fatal(err)
	}
	raw := []string{e.metricsText(), e.logs.String(), strings.Join(e.seen, "\n"), fmt.Sprintf("%+v", ev)}
	for _, ev := range e.events() {
		raw = append(raw, ev.ComputeHash()+ev.Outcome+strings.Join(ev.Reasons, ",")+mapString(ev.Details))
	}
	for i, s := range raw {
		if strings.Contains(s, canary) {
			t.Fatalf("the secret leaked (source %d):\n%s", i, s)
		}
	}
	if len(e.seen) < 8 {
		t.Fatalf("only %d responses scanned", len(e.seen))
	}
}

// TestAPI_UndeliveredCredentialsAreRevoked: a secret that never reached
// its agent does not stay live.
func TestAPI_UndeliveredCredentialsAreRevoked(t *testing.T) {
	e := newEnv(t)
	svid := e.ca.X509SVID(reportBot)
	r := httptest.NewRequest("POST", "/v1/credentials", strings.NewReader(`{"task":"report","params":{"region":"eu"}}`))
	r.Header.Set("Content-Type", "application/json")
	r.TLS = &tls.ConnectionState{Version: tls.VersionTLS13, HandshakeComplete: true, PeerCertificates: []*x509.Certificate{svid.Certificates[0]}}
	w := &brokenWriter{header: http.Header{}}
	e.handler.ServeHTTP(w, r)
	ls, err := e.svc.Leases().List(ctx, broker.LeaseFilter{Agent: reportBot.String()})
	if err != nil || len(ls) != 1 {
		t.Fatalf("leases = %v, %v", ls, err)
	}
	if ls[0].State != broker.StateRevoking || ls[0].RevokeReason != "response not delivered" {
		t.Fatalf("lease = %+v; want it revoked", ls[0])
	}
}

type brokenWriter struct {
	header http.Header
	status int
}

func (w *brokenWriter) Header() http.Header       { return w.header }
func (w *brokenWriter) WriteHeader(s int)         { w.status = s }
func (w *brokenWriter) Write([]byte) (int, error) { return 0, errors.New("connection reset by peer") }

func TestAPI_AdminSocket(t *testing.T) {
	e := newEnv(t)
	l := e.issue(reportBot, "report", "eu").Lease
	path, h, srv := e.adminSocket(t)

	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("socket mode = %v, %v; want 0600", fi.Mode(), err)
	}
	if _, err := httpapi.ListenUnix(path); err == nil {
		t.Fatal("a second listener took over a live admin socket")
	}

	c := client.NewUnix(path)
	if ls, err := c.Leases(ctx, api.LeaseQuery{}); err != nil || len(ls.Leases) != 1 {
		t.Fatalf("leases = %+v, %v", ls, err)
	}
	if _, err := c.PauseAgent(ctx, chatty.String(), "break glass"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Freeze(ctx, true, "break glass"); err != nil {
		t.Fatal(err)
	}
	// Reopening needs a person with the admin role, never the socket.
	if _, err := c.Freeze(ctx, false, "over"); client.Code(err) != api.CodeForbidden {
		t.Fatalf("freeze end through the admin socket: %v, want forbidden", err)
	}
	if res, err := c.Revoke(ctx, api.RevokeRequest{Lease: l.ID, Reason: "break glass"}); err != nil || res.Count != 1 {
		t.Fatalf("revoke = %+v, %v", res, err)
	}
	evs := e.events()
	if last := evs[len(evs)-1]; last.Type != broker.EventRevoke || last.Actor != httpapi.AdminSocketActor {
		t.Fatalf("last event = %+v, want a revoke by admin-socket", last)
	}
	// Never an agent.
	if _, err := c.Credentials(ctx, credReq("report", "eu")); client.Code(err) != api.CodeForbidden {
		t.Fatalf("credentials on the admin socket: %v", err)
	}

	// On a TCP listener the admin handler refuses to serve.
	tcp := httptest.NewServer(h)
	defer tcp.Close()
	resp, err := http.Get(tcp.URL + "/v1/leases")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 500 || bytes.Contains(body, []byte(l.ID)) {
		t.Fatalf("admin handler over TCP: %d %s", resp.StatusCode, body)
	}
	if !strings.Contains(e.logs.String(), "not a unix socket") {
		t.Fatal("the misconfiguration is not logged")
	}

	srv.Close()
	if _, err := os.Lstat(path); err == nil {
		// Serve's Close closes the listener, which removes the socket.
		t.Fatal("socket file left after close")
	}
	// A stale socket (nobody listening) is replaced.
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	ln2, err := httpapi.ListenUnix(path)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	ln2.Close()
	// A file that is not a socket is never removed.
	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := httpapi.ListenUnix(path); err == nil {
		t.Fatal("ListenUnix replaced a regular file")
	}
}

func TestNew_Config(t *testing.T) {
	e := newEnv(t)
	if _, err := httpapi.New(httpapi.Config{}); err == nil {
		t.Fatal("no Service accepted")
	}
	if _, err := httpapi.New(httpapi.Config{Service: e.svc}); err == nil || !strings.Contains(err.Error(), "Verifier") {
		t.Fatalf("no Verifier: %v", err)
	}
}

// TestAPI_RefusalBudget: a caller that keeps sending refused requests
// spends its budget, then gets 429 too_many_refusals with nothing
// evaluated or audited, while everyone else is served; every refusal is
// counted in latch_refused_total.
func TestAPI_RefusalBudget(t *testing.T) {
	clock := brokertest.NewClock(time.Now())
	e := newEnv(t, func(c *httpapi.Config) { c.RefusalsPerCaller, c.Now = 5, clock.Now })
	flood := e.as(intruder)
	for i := range 5 {
		if _, err := flood.Credentials(ctx, credReq("report", "mars")); client.Code(err) != api.CodeForbidden {
			t.Fatalf("refusal %d: %v, want forbidden", i, err)
		}
	}
	before := len(e.events())
	for i := range 200 {
		if _, err := flood.Credentials(ctx, credReq("report", "mars")); !limitedFor(err, "too_many_refusals") {
			t.Fatalf("request %d past the budget: %v, want too_many_refusals", i, err)
		}
	}
	if after := len(e.events()); after != before {
		t.Fatalf("requests past the budget wrote %d audit events, want none", after-before)
	}
	// Nor a log line each: one a second, with the count since the last
	// (written before the answer: a later request cannot be counted first).
	const line = "requests refused: callers over their refusal budget"
	lines := func() int { return strings.Count(e.logs.String(), line) }
	if !within(5*time.Second, func() bool { return lines() > 0 }) || lines() != 1 {
		t.Fatalf("200 requests past the budget within a second logged %d lines, want 1", lines())
	}
	clock.Add(time.Second)
	if _, err := flood.Credentials(ctx, credReq("report", "mars")); !limitedFor(err, "too_many_refusals") {
		t.Fatalf("a request past the budget a second later: %v", err)
	}
	if !within(5*time.Second, func() bool { return lines() == 2 }) || !strings.Contains(e.logs.String(), "count=200") {
		t.Fatalf("a second later, want a second line counting the 199 since and this one:\n%s", grep(e.logs.String(), line))
	}
	// Another caller, and an unidentified one (keyed by its connection),
	// each have a budget of their own.
	e.issue(reportBot, "report", "eu")
	if status, _, _ := e.rawWith(e.httpClient(nil, nil), "POST", "/v1/credentials", "application/json", []byte(`{}`)); status != http.StatusUnauthorized {
		t.Fatalf("an unidentified caller: %d, want 401", status)
	}
	m := e.metricsText()
	for _, want := range []string{`latch_refused_total{reason="too_many_refusals"} 201`, `latch_refused_total{reason="unknown_agent"} 5`, `latch_refused_total{reason="no_credential"} 1`} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s:\n%s", want, grep(m, "latch_refused_total"))
		}
	}
}
