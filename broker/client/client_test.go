package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker/api"
	"github.com/latchbroker/latch/broker/client"
)

var ctx = context.Background()

// server answers every request with fn and records the last request.
func server(t *testing.T, fn func(w http.ResponseWriter, r *http.Request)) (*client.Client, *http.Request) {
	t.Helper()
	last := new(http.Request)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		*last = *r.Clone(context.Background())
		fn(w, r)
	}))
	t.Cleanup(srv.Close)
	c, err := client.New(srv.Client(), srv.URL+"/")
	if err != nil {
		t.Fatal(err)
	}
	return c, last
}

func TestClient_Requests(t *testing.T) {
	var gotBody string
	c, last := server(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		gotBody = string(b)
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.URL.Path == "/v1/credentials":
			fmt.Fprint(w, `{"lease":{"id":"01J00000000000000000000000","state":"active"},"secret":{"password":"pw"},"future_field":1}`)
		case strings.HasPrefix(r.URL.Path, "/v1/agents/"):
			fmt.Fprint(w, `{"agent":{"id":"x","state":"paused"}}`)
		default:
			fmt.Fprint(w, `{}`)
		}
	})
	res, err := c.Credentials(ctx, api.CredentialsRequest{Task: "report", TTL: api.Duration(90 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if res.Secret["password"] != "pw" || res.Lease.ID != "01J00000000000000000000000" {
		t.Fatalf("response = %+v", res)
	}
	if last.Method != "POST" || last.Header.Get("Content-Type") != "application/json" || gotBody != `{"task":"report","ttl":"1m30s"}` {
		t.Fatalf("request = %s %s %q", last.Method, last.Header.Get("Content-Type"), gotBody)
	}

	// An agent's SPIFFE ID travels as one escaped path segment.
	if _, err := c.PauseAgent(ctx, "spiffe://example.org/agent/x", "why"); err != nil {
		t.Fatal(err)
	}
	if last.URL.EscapedPath() != "/v1/agents/spiffe:%2F%2Fexample.org%2Fagent%2Fx/pause" || gotBody != `{"reason":"why"}` {
		t.Fatalf("pause went to %s with %s", last.URL.EscapedPath(), gotBody)
	}

	if _, err := c.Leases(ctx, api.LeaseQuery{Agent: "spiffe://e/a", State: "active", Limit: 5}); err != nil {
		t.Fatal(err)
	}
	if q := last.URL.Query(); q.Get("agent") != "spiffe://e/a" || q.Get("state") != "active" || q.Get("limit") != "5" || q.Has("task") {
		t.Fatalf("query = %v", q)
	}
	if err := c.Release(ctx, "01J00000000000000000000000"); err != nil || last.Method != "DELETE" || gotBody != "" {
		t.Fatalf("release: %v %s %q", err, last.Method, gotBody)
	}
	if _, err := c.Freeze(ctx, false, "over"); err != nil || gotBody != `{"on":false,"reason":"over"}` {
		t.Fatalf("freeze body %q, %v", gotBody, err)
	}
	if _, err := c.Audit(ctx, api.AuditQuery{After: 7, Types: []string{"issue", "deny"}}); err != nil {
		t.Fatal(err)
	}
	if q := last.URL.Query(); q.Get("after") != "7" || q.Get("type") != "issue,deny" {
		t.Fatalf("audit query = %v", q)
	}
}

func TestClient_Errors(t *testing.T) {
	tests := []struct {
		name   string
		status int
		header map[string]string
		body   string
		want   client.Error
	}{
		{"Denied", 403, nil, `{"error":{"code":"forbidden","message":"denied: window","reasons":["frozen:billing-close"],"next_allowed_at":"2026-03-03T00:00:00Z"}}`,
			client.Error{Status: 403, Code: "forbidden", Message: "denied: window", Reasons: []string{"frozen:billing-close"}, NextAllowedAt: time.Date(2026, 3, 3, 0, 0, 0, 0, time.UTC)}},
		{"Frozen", 403, nil, `{"error":{"code":"forbidden","message":"denied: nightly-report is frozen during window billing-close; next allowed at 2027-01-02T00:00:00+01:00","reasons":["frozen:billing-close"],"next_allowed_at":"2027-01-02T00:00:00+01:00"}}`,
			client.Error{Status: 403, Code: "forbidden", Message: "denied: nightly-report is frozen during window billing-close; next allowed at 2027-01-02T00:00:00+01:00", Reasons: []string{"frozen:billing-close"}, NextAllowedAt: time.Date(2027, 1, 2, 0, 0, 0, 0, time.FixedZone("", 3600))}},
		{"Limited", 429, map[string]string{"Retry-After": "30"}, `{"error":{"code":"limit","message":"slow","reasons":["rate_limited"],"retry_after":30}}`,
			client.Error{Status: 429, Code: "limit", Message: "slow", Reasons: []string{"rate_limited"}, RetryAfter: 30 * time.Second}},
		{"Internal", 500, map[string]string{"X-Request-Id": "abc"}, `{"error":{"code":"internal","message":"internal error (request abc)","reasons":[],"request_id":"abc"}}`,
			client.Error{Status: 500, Code: "internal", Message: "internal error (request abc)", Reasons: []string{}, RequestID: "abc"}},
		{"NotLatch", 502, nil, "<html>Bad Gateway</html>",
			client.Error{Status: 502, Message: "<html>Bad Gateway</html>"}},
		{"Empty", 503, map[string]string{"Retry-After": "5"}, "",
			client.Error{Status: 503, Message: "Service Unavailable", RetryAfter: 5 * time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := server(t, func(w http.ResponseWriter, r *http.Request) {
				for k, v := range tt.header {
					w.Header().Set(k, v)
				}
				w.WriteHeader(tt.status)
				fmt.Fprint(w, tt.body)
			})
			_, err := c.Credentials(ctx, api.CredentialsRequest{Task: "x"})
			var e *client.Error
			if !errors.As(err, &e) {
				t.Fatalf("err = %v, want *client.Error", err)
			}
			got, _ := json.Marshal(e)
			want, _ := json.Marshal(tt.want)
			if string(got) != string(want) {
				t.Fatalf("error = %s\nwant    %s", got, want)
			}
			if client.Code(err) != tt.want.Code || !strings.Contains(err.Error(), fmt.Sprint(tt.status)) {
				t.Fatalf("Code = %q, Error() = %q", client.Code(err), err.Error())
			}
			if n := strings.Count(err.Error(), "next allowed at"); n != min(1, strings.Count(tt.body, "next_allowed_at")) {
				t.Fatalf("Error() = %q says the next allowed time %d times", err.Error(), n)
			}
		})
	}
}

func TestClient_New(t *testing.T) {
	for _, u := range []string{"", "latch:8443", "ftp://x", "https://"} {
		if _, err := client.New(http.DefaultClient, u); err == nil {
			t.Errorf("base URL %q accepted", u)
		}
	}
	if _, err := client.New(nil, "https://latch:8443"); err == nil {
		t.Error("nil http.Client accepted")
	}
}

func TestClient_Events(t *testing.T) {
	c, last := server(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		f := w.(http.Flusher)
		fmt.Fprint(w, ": hello\n\n")
		f.Flush()
		fmt.Fprint(w, "id: 7\ndata: {\"seq\":7,\"type\":\"issue\",\n")
		fmt.Fprint(w, "data: \"actor\":\"a\"}\n\n")
		fmt.Fprint(w, ": keepalive\r\n\r\n")
		fmt.Fprint(w, "id: 9\r\ndata: {\"seq\":9,\"type\":\"deny\"}\r\n\r\n")
		fmt.Fprint(w, "event: error\ndata: {\"error\":{\"code\":\"unavailable\",\"message\":\"the audit log is unavailable\",\"reasons\":[]}}\n\n")
	})
	s, err := c.Events(ctx, api.EventsQuery{Agent: "spiffe://e/a", After: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if last.URL.Query().Get("after") != "3" || last.Header.Get("Accept") != "text/event-stream" {
		t.Fatalf("request = %v", last.URL)
	}
	e, err := s.Next()
	if err != nil || e.Seq != 7 || e.Type != "issue" || e.Actor != "a" || s.LastSeq() != 7 {
		t.Fatalf("first = %+v, %v (last %d)", e, err, s.LastSeq())
	}
	if e, err = s.Next(); err != nil || e.Seq != 9 || s.LastSeq() != 9 {
		t.Fatalf("second = %+v, %v", e, err)
	}
	_, err = s.Next()
	if client.Code(err) != api.CodeUnavailable {
		t.Fatalf("error event: %v", err)
	}
	if _, err = s.Next(); err != io.EOF {
		t.Fatalf("end of stream: %v", err)
	}
}

func TestClient_EventsRefused(t *testing.T) {
	c, _ := server(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(403)
		fmt.Fprint(w, `{"error":{"code":"forbidden","message":"needs viewer","reasons":["missing_role:viewer"]}}`)
	})
	if _, err := c.Events(ctx, api.EventsQuery{}); client.Code(err) != api.CodeForbidden {
		t.Fatalf("err = %v", err)
	}
	c2, _ := server(t, func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "hello") })
	if _, err := c2.Events(ctx, api.EventsQuery{}); err == nil || !strings.Contains(err.Error(), "not an event stream") {
		t.Fatalf("err = %v", err)
	}
}

func TestClient_Unix(t *testing.T) {
	dir, err := os.MkdirTemp("", "latchc")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "admin.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"count":%d}`, len(r.URL.Path))
	})}
	go srv.Serve(ln)
	defer srv.Close()
	res, err := client.NewUnix(path).Revoke(ctx, api.RevokeRequest{All: true, Reason: "x"})
	if err != nil || res.Count != len("/v1/revoke") {
		t.Fatalf("revoke over the socket = %+v, %v", res, err)
	}
}
