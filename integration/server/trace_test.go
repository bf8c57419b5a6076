package server

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracev1 "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/latchbroker/latch/broker/api"
)

// otlpReceiver is an OTLP/HTTP traces endpoint that decodes the real
// protobuf and keeps every span, and every body as it came.
type otlpReceiver struct {
	srv    *httptest.Server
	mu     sync.Mutex
	spans  []*tracev1.Span
	bodies [][]byte
}

func newOTLPReceiver(t *testing.T) *otlpReceiver {
	o := &otlpReceiver{}
	o.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		var req collectortrace.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(body, &req)
		}
		if r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/x-protobuf" || err != nil {
			t.Errorf("OTLP export %s %s (%s): %v", r.Method, r.URL.Path, r.Header.Get("Content-Type"), err)
			http.Error(w, "bad export", http.StatusBadRequest)
			return
		}
		o.mu.Lock()
		o.bodies = append(o.bodies, body)
		for _, rs := range req.ResourceSpans {
			for _, ss := range rs.ScopeSpans {
				o.spans = append(o.spans, ss.Spans...)
			}
		}
		o.mu.Unlock()
		out, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.Write(out)
	}))
	t.Cleanup(o.srv.Close)
	return o
}

// waitSpans waits until want(spans) holds.
func (o *otlpReceiver) waitSpans(t *testing.T, what string, want func([]*tracev1.Span) bool) []*tracev1.Span {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		o.mu.Lock()
		spans := append([]*tracev1.Span(nil), o.spans...)
		o.mu.Unlock()
		if want(spans) {
			return spans
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s among the %d spans exported", what, len(spans))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func spanAttr(s *tracev1.Span, key string) string {
	for _, kv := range s.Attributes {
		if kv.Key == key {
			return kv.Value.GetStringValue()
		}
	}
	return ""
}

// TestServer_TraceContext: a request with a traceparent gets a lease
// with its trace ID, and latch exports (OTLP/HTTP, protobuf) its
// evaluate, mint and commit spans in that trace, children of the agent's
// span, and a revoke span for the lease; the secret is in no span.
func TestServer_TraceContext(t *testing.T) {
	otlp := newOTLPReceiver(t)
	l := startLatchWith(t, latchOptions{Extra: "telemetry: { otlp_endpoint: \"" + otlp.srv.URL + "/v1/traces\" }\n"})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const traceID, parentID = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
	agent := agentPrefix + "traced-bot"
	status, body := post(t, l.tlsClient(agent), l.api+"/v1/credentials", []byte(`{"task":"close-ticket","params":{"ticket":"42"},"reason":"traced"}`),
		http.Header{"Traceparent": {"00-" + traceID + "-" + parentID + "-01"}})
	var res api.CredentialsResponse
	if err := json.Unmarshal([]byte(body), &res); status != 200 || err != nil || res.Lease.TraceID != traceID {
		t.Fatalf("POST /v1/credentials with a traceparent: %d %s (%v)", status, body, err)
	}
	inTrace := func(s *tracev1.Span) bool {
		return hex.EncodeToString(s.TraceId) == traceID && hex.EncodeToString(s.ParentSpanId) == parentID
	}
	spans := otlp.waitSpans(t, "evaluate, mint and commit span in the request's trace", func(spans []*tracev1.Span) bool {
		got := map[string]bool{}
		for _, s := range spans {
			if inTrace(s) && spanAttr(s, "latch.agent") == agent {
				got[s.Name] = true
			}
		}
		return got["latch.evaluate"] && got["latch.mint"] && got["latch.commit"]
	})
	for _, s := range spans {
		if s.Name == "latch.mint" && inTrace(s) && spanAttr(s, "latch.lease.id") != res.Lease.ID {
			t.Errorf("the mint span names lease %q, want %s", spanAttr(s, "latch.lease.id"), res.Lease.ID)
		}
	}
	if _, err := l.admin().Revoke(ctx, api.RevokeRequest{Lease: res.Lease.ID, Reason: "trace test"}); err != nil {
		t.Fatal(err)
	}
	otlp.waitSpans(t, "revoke span of the lease", func(spans []*tracev1.Span) bool {
		for _, s := range spans {
			if s.Name == "latch.revoke" && spanAttr(s, "latch.lease.id") == res.Lease.ID {
				return true
			}
		}
		return false
	})
	otlp.mu.Lock()
	defer otlp.mu.Unlock()
	for _, b := range otlp.bodies {
		if strings.Contains(string(b), res.Secret["token"]) {
			t.Fatal("an exported span holds the secret")
		}
	}
}
