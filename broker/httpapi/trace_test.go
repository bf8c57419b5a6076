package httpapi_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/latchbroker/latch/broker/api"
)

// withHeader adds a header to every request.
type withHeader struct {
	name, value string
	base        http.RoundTripper
}

func (h withHeader) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set(h.name, h.value)
	return h.base.RoundTrip(r)
}

// A W3C traceparent puts its trace ID on the lease and on the request's
// audit event; a malformed one, or one that disagrees with the body's
// trace_id, is refused before anything is evaluated.
func TestCredentials_Traceparent(t *testing.T) {
	e := newEnv(t)
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	send := func(traceparent, body string) (int, []byte) {
		hc := e.httpClient(e.ca.X509SVID(reportBot), nil)
		hc.Transport = withHeader{name: "traceparent", value: traceparent, base: hc.Transport}
		status, _, b := e.rawWith(hc, "POST", "/v1/credentials", "application/json", []byte(body))
		return status, b
	}
	status, b := send("00-"+traceID+"-00f067aa0ba902b7-01", `{"task":"report","params":{"region":"eu"},"reason":"nightly"}`)
	var res api.CredentialsResponse
	if err := json.Unmarshal(b, &res); status != 200 || err != nil || res.Lease.TraceID != traceID {
		t.Fatalf("with a traceparent: %d %s (%v), want the lease with trace ID %s", status, b, err, traceID)
	}
	found := false
	for _, ev := range e.events() {
		if ev.Type == "issue" && ev.Lease == res.Lease.ID && ev.Details["trace_id"] == traceID {
			found = true
		}
	}
	if !found {
		t.Fatal("the issue event does not carry the trace ID")
	}
	for name, tc := range map[string]struct{ traceparent, body string }{
		"malformed":    {"00-" + traceID + "-0000000000000000-01", `{"task":"report","params":{"region":"eu"}}`},
		"disagreement": {"00-" + traceID + "-00f067aa0ba902b7-01", `{"task":"report","params":{"region":"eu"},"trace_id":"other"}`},
	} {
		status, b := send(tc.traceparent, tc.body)
		if got := apiError(t, b); status != 400 || len(got.Reasons) == 0 || got.Reasons[0] != "bad_trace_context" {
			t.Errorf("%s: %d %s, want 400 bad_trace_context", name, status, b)
		}
	}
}

// A bad parameter value is one class whatever is wrong with it: a
// control character and a quote are both the template's refusal
// (403 param_constraint, naming the parameter); a value that is no
// string at all is malformed, naming the parameter too.
func TestCredentials_BadParamValues(t *testing.T) {
	e := newEnv(t)
	for name, tc := range map[string]struct {
		body   string
		status int
		reason string
		names  string
	}{
		"control character": {`{"task":"report","params":{"region":"eu\u0000"}}`, 403, "param_constraint", "region"},
		"quote":             {`{"task":"report","params":{"region":"eu\""}}`, 403, "param_constraint", "region"},
		"number":            {`{"task":"report","params":{"region":7}}`, 400, "wrong_type", "params.region"},
	} {
		status, _, b := e.raw(reportBot, "POST", "/v1/credentials", "application/json", []byte(tc.body))
		got := apiError(t, b)
		if status != tc.status || len(got.Reasons) == 0 || got.Reasons[0] != tc.reason || !strings.Contains(got.Message, tc.names) {
			t.Errorf("%s: %d %+v, want %d %s naming %s", name, status, got, tc.status, tc.reason, tc.names)
		}
	}
}
