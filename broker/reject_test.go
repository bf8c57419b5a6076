package broker_test

import (
	"context"
	"strings"
	"testing"

	"github.com/latchbroker/latch/broker"
)

func TestService_Reject(t *testing.T) {
	svc, m, st := newHubService(t)
	ctx := context.Background()
	long := strings.Repeat("é", 600) // 1200 bytes
	err := svc.Audit().Reject(ctx, broker.Refusal{Actor: "spiffe://example.org/agent/bot", Endpoint: "POST /v1/credentials",
		Reason: "unknown_field", Message: "unknown field \"x\"\n\x1b[31mforged log line " + long, Remote: "10.0.0.1:5555"})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Audit().Violation(ctx, broker.Refusal{Endpoint: "GET /v1/leases", Reason: "expired", Message: "SVID expired", Remote: "10.0.0.2:1"}); err != nil {
		t.Fatal(err)
	}
	var evs []broker.Event
	st.Events(ctx, 0, func(e broker.Event) (bool, error) { evs = append(evs, e); return true, nil })
	if len(evs) != 2 {
		t.Fatalf("%d events", len(evs))
	}
	r := evs[0]
	if r.Type != broker.EventRejected || r.Actor != "spiffe://example.org/agent/bot" || r.Reasons[0] != "unknown_field" ||
		r.Details["endpoint"] != "POST /v1/credentials" || r.Details["remote"] != "10.0.0.1:5555" {
		t.Fatalf("rejected event = %+v", r)
	}
	msg := r.Details["message"]
	if strings.ContainsAny(msg, "\n\x1b") || len(msg) > 520 || !strings.HasSuffix(msg, "…") || !strings.HasPrefix(msg, `unknown field "x"?`) {
		t.Fatalf("message not cleaned and bounded: %q (%d bytes)", msg, len(msg))
	}
	v := evs[1]
	if v.Type != broker.EventViolation || v.Actor != "" || v.Reasons[0] != "expired" || v.Outcome != "refused" {
		t.Fatalf("violation event = %+v", v)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.violations) != 1 || m.violations[0] != "expired" {
		t.Fatalf("violations counted = %v", m.violations)
	}
}
