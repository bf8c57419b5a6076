package promstats_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/latchbroker/latch/backends/vault"
	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/promstats"
)

var (
	_ broker.Metrics          = (*promstats.Metrics)(nil)
	_ broker.EventDropCounter = (*promstats.Metrics)(nil)
	_ vault.Metrics           = (*promstats.Metrics)(nil)
	// httpapi.Metrics, without importing the HTTP layer here.
	_ interface {
		HTTPRequest(string, int, time.Duration)
		Violation(string)
	} = (*promstats.Metrics)(nil)
)

func scrape(t *testing.T, m *promstats.Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("/metrics: %d", rec.Code)
	}
	return rec.Body.String()
}

func TestMetrics(t *testing.T) {
	m := promstats.New()
	m.RequestDone("issued", "", 3*time.Millisecond)
	m.RequestDone("issued", "replayed", time.Millisecond)
	m.RequestDone("denied", "frozen", time.Microsecond)
	m.Violation("unknown_agent")
	m.Violation("unknown_agent")
	m.RevocationDone("ok")
	m.RevocationDone("retry")
	m.QueueDepth(7)
	m.AuditAppendFailed()
	m.StoreWrite(2 * time.Millisecond)
	m.EventDropped()
	m.ObserveVaultCall("token.create", "ok", 20*time.Millisecond)
	m.ObserveVaultCall("token.create", "unavailable", 30*time.Millisecond)
	m.HTTPRequest("POST /v1/credentials", 200, time.Millisecond)
	m.SetActiveLeases(map[string]int{"report": 3, "ticket": 1})

	out := scrape(t, m)
	for _, want := range []string{
		`latch_requests_total{outcome="issued",reason=""} 1`,
		`latch_requests_total{outcome="issued",reason="replayed"} 1`,
		`latch_requests_total{outcome="denied",reason="frozen"} 1`,
		`latch_issue_duration_seconds_count 2`,
		`latch_violations_total{reason="unknown_agent"} 2`,
		`latch_revocations_total{result="ok"} 1`,
		`latch_revocations_total{result="retry"} 1`,
		`latch_revocation_queue_depth 7`,
		`latch_audit_append_failures_total 1`,
		`latch_store_write_duration_seconds_count 1`,
		`latch_events_dropped_total 1`,
		`latch_vault_request_duration_seconds_count{op="token.create",outcome="ok"} 1`,
		`latch_vault_request_duration_seconds_count{op="token.create",outcome="unavailable"} 1`,
		`latch_http_requests_total{code="200",route="POST /v1/credentials"} 1`,
		`latch_http_request_duration_seconds_count{route="POST /v1/credentials"} 1`,
		`latch_active_leases{template="report"} 3`,
		`latch_active_leases{template="ticket"} 1`,
		`go_goroutines`,
		`process_start_time_seconds`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	m.SetActiveLeases(map[string]int{"report": 0})
	out = scrape(t, m)
	if !strings.Contains(out, `latch_active_leases{template="report"} 0`) || strings.Contains(out, `template="ticket"`) {
		t.Errorf("a template with no leases any more must go:\n%s", grepLines(out, "latch_active_leases"))
	}
}

// TestMetrics_OwnRegistry: two Metrics do not share series, and nothing
// lands in the global registry.
func TestMetrics_OwnRegistry(t *testing.T) {
	a, b := promstats.New(), promstats.New()
	a.AuditAppendFailed()
	if strings.Contains(scrape(t, b), "latch_audit_append_failures_total 1") {
		t.Fatal("two Metrics share a series")
	}
	if a.Registry() == b.Registry() {
		t.Fatal("shared registry")
	}
}

// TestMetrics_LabelsBounded: label values are capped in number and made
// valid, so no caller can grow the registry without bound or make it
// panic.
func TestMetrics_LabelsBounded(t *testing.T) {
	m := promstats.New()
	for i := range 500 {
		m.Violation(fmt.Sprintf("reason-%d", i))
	}
	m.Violation("bad\xffutf8")
	m.ObserveVaultCall(strings.Repeat("x", 1000), "ok", time.Millisecond)
	out := scrape(t, m)
	if n := strings.Count(out, "latch_violations_total{"); n > 201 {
		t.Fatalf("%d violation series", n)
	}
	if !strings.Contains(out, `latch_violations_total{reason="other"} 301`) {
		t.Fatalf("overflow not counted as other:\n%s", grepLines(out, `reason="other"`))
	}
}

type lister struct {
	leases  []*broker.Lease
	pending int
	err     error
}

func (l *lister) CountApprovals(_ context.Context, status broker.ApprovalStatus) (int, error) {
	if status != broker.ApprovalPending {
		return 0, nil
	}
	return l.pending, l.err
}

func (l *lister) CountByTask(_ context.Context, state broker.LeaseState) (map[string]int, error) {
	out := map[string]int{}
	for _, x := range l.leases {
		if x.State == state {
			out[x.Task]++
		}
	}
	return out, l.err
}

func TestTrackCounts(t *testing.T) {
	m := promstats.New()
	src := &lister{pending: 3, leases: []*broker.Lease{
		{ID: "1", Asked: broker.Asked{Task: "report"}, State: broker.StateActive},
		{ID: "2", Asked: broker.Asked{Task: "report"}, State: broker.StateActive},
		{ID: "3", Asked: broker.Asked{Task: "report"}, State: broker.StateRevoked},
		{ID: "4", Asked: broker.Asked{Task: "ticket"}, State: broker.StateActive},
	}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.TrackCounts(ctx, src, time.Hour); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(scrape(t, m), `latch_active_leases{template="report"} 2`) {
		if time.Now().After(deadline) {
			t.Fatalf("not counted:\n%s", grepLines(scrape(t, m), "latch_active_leases"))
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if !strings.Contains(scrape(t, m), `latch_active_leases{template="ticket"} 1`) {
		t.Fatal("ticket not counted")
	}
	if !strings.Contains(scrape(t, m), "latch_approvals_pending 3") {
		t.Fatalf("pending approvals not counted:\n%s", grepLines(scrape(t, m), "approvals"))
	}
	if _, err := promstats.CountActiveLeases(ctx, &lister{err: errors.New("down")}); err == nil {
		t.Fatal("a failed count reported no error")
	}
}

func grepLines(s, sub string) string {
	var out []string
	for line := range strings.SplitSeq(s, "\n") {
		if strings.Contains(line, sub) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

func TestWebhookMetrics(t *testing.T) {
	m := promstats.New()
	m.WebhookDelivery("delivered")
	m.WebhookDelivery("delivered")
	m.WebhookDelivery("failed")
	m.WebhookOutbox(3)
	text := scrape(t, m)
	for _, want := range []string{`latch_webhook_deliveries_total{result="delivered"} 2`, `latch_webhook_deliveries_total{result="failed"} 1`, "latch_webhook_outbox_depth 3"} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %s:\n%s", want, grepLines(text, "webhook"))
		}
	}
}

// The outcome series alerts are written on are there at zero before
// anything happens.
func TestMetrics_OutcomesAtZero(t *testing.T) {
	out := scrape(t, promstats.New())
	for _, want := range []string{
		`latch_revocations_total{result="irrevocable"} 0`, `latch_revocations_total{result="ok"} 0`,
		`latch_revocations_total{result="retry"} 0`, `latch_revocations_total{result="expires"} 0`,
		`latch_webhook_deliveries_total{result="dead"} 0`, `latch_webhook_deliveries_total{result="failed"} 0`,
		`latch_requests_total{outcome="failed",reason=""} 0`, `latch_requests_total{outcome="denied",reason=""} 0`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("a new registry lacks %s", want)
		}
	}
}
