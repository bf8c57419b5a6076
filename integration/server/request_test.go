package server

import (
	"context"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker/api"
)

func TestServer_BadRequests(t *testing.T) {
	l := startLatch(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	agent := agentPrefix + "sloppy-bot"
	hc := l.tlsClient(agent)
	for _, tc := range []struct {
		name   string
		body   string
		status int
		code   string
		names  string // what the message must name
	}{
		{"Malformed", `{"task": "close-ticket",`, http.StatusBadRequest, "invalid", "malformed JSON"},
		{"UnknownField", `{"task":"close-ticket","params":{"ticket":"42"},"reason":"x","ticket":"42"}`, http.StatusBadRequest, "invalid", `unknown field \"ticket\"`},
		{"TrailingData", `{"task":"close-ticket","params":{"ticket":"42"}} {}`, http.StatusBadRequest, "invalid", "trailing data"},
		{"Oversized", `{"task":"close-ticket","reason":"` + strings.Repeat("a", 1<<20) + `"}`, http.StatusRequestEntityTooLarge, "too_large", "larger than 65536 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, resp := post(t, hc, l.api+"/v1/credentials", []byte(tc.body), nil)
			if status != tc.status || !strings.Contains(resp, `"code":"`+tc.code+`"`) || !strings.Contains(resp, tc.names) {
				t.Fatalf("= %d %s, want %d %s naming %s", status, resp, tc.status, tc.code, tc.names)
			}
		})
	}
	// Nothing was issued; each request was audited as rejected.
	leases, err := l.admin().Leases(ctx, api.LeaseQuery{Agent: agent})
	if err != nil || len(leases.Leases) != 0 {
		t.Fatalf("leases of %s = %+v, %v", agent, leases, err)
	}
	audit, err := l.admin().Audit(ctx, api.AuditQuery{Types: []string{"rejected"}, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	if len(audit.Events) < 4 {
		t.Fatalf("%d rejected events, want 4: %+v", len(audit.Events), audit.Events)
	}
}

var requestsTotal = regexp.MustCompile(`(?m)^latch_requests_total\{[^}]*\} ([0-9.e+]+)$`)

// sumRequests adds up latch_requests_total over its labels.
func sumRequests(t testing.TB, metrics string) float64 {
	t.Helper()
	var sum float64
	for _, m := range requestsTotal.FindAllStringSubmatch(metrics, -1) {
		v, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			t.Fatal(err)
		}
		sum += v
	}
	return sum
}

// TestServer_Pprof: with server.pprof, metrics_listen serves Go's
// profiles (TestServer_Metrics checks that it does not by default).
func TestServer_Pprof(t *testing.T) {
	l := startLatchWith(t, latchOptions{ServerExtra: "  pprof: true\n"})
	if heap := get(t, l.metrics+"/debug/pprof/heap?debug=1"); !strings.HasPrefix(heap, "heap profile:") {
		t.Fatalf("heap profile:\n%.200s", heap)
	}
	cpu := get(t, l.metrics+"/debug/pprof/profile?seconds=1")
	if !strings.HasPrefix(cpu, "\x1f\x8b") {
		t.Fatalf("a CPU profile is not the gzipped protobuf go tool pprof reads: %q", cpu[:min(len(cpu), 16)])
	}
}

func TestServer_Metrics(t *testing.T) {
	l := startLatch(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	before := sumRequests(t, get(t, l.metrics+"/metrics"))
	c := l.client(agentPrefix + "metrics-bot")
	var secrets []string
	for _, p := range []struct{ task, k, v string }{
		{"close-ticket", "ticket", "42"}, {"nightly-report", "region", "eu"},
	} {
		res := fetch(ctx, t, c, p.task, map[string]string{p.k: p.v})
		for _, v := range res.Secret {
			secrets = append(secrets, v)
		}
	}
	_, err := c.Credentials(ctx, api.CredentialsRequest{Task: "deploy", Reason: "test"})
	denied(t, err, http.StatusForbidden, api.CodeForbidden, "task_not_granted")

	metrics := get(t, l.metrics+"/metrics")
	if after := sumRequests(t, metrics); after < before+3 {
		t.Fatalf("latch_requests_total went from %v to %v over 3 requests\n%s", before, after, metrics)
	}
	if !strings.Contains(metrics, `reason="task_not_granted"`) {
		t.Fatalf("/metrics does not count the denial by reason:\n%s", metrics)
	}
	if _, err := tryGet(l.metrics+"/debug/pprof/", http.StatusNotFound); err != nil {
		t.Fatalf("without server.pprof, want 404: %v", err)
	}
	for _, s := range secrets {
		if len(s) >= 8 && strings.Contains(metrics, s) {
			t.Fatalf("/metrics contains a secret value minted in this test")
		}
		if len(s) >= 8 && strings.Contains(l.log(), s) {
			t.Fatalf("the server's log contains a secret value minted in this test")
		}
	}
}
