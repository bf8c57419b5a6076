package templates

import (
	"testing"
	"time"
)

// BenchmarkEvaluate measures one decision for nightly-report: two freeze
// windows (billing-close deny, outside business-hours require_approval) and
// one CEL escalation, rendering its vars and vault-lease path. The goal is
// at least 100,000 decisions/s on one core (go test -cpu 1).
func BenchmarkEvaluate(b *testing.B) {
	p := loadTestPolicy(b)
	cases := []struct {
		name string
		req  Request
		want Outcome
	}{
		{"allow", Request{Agent: reportBot, Task: "nightly-report", Params: map[string]string{"region": "eu"}, Now: time.Date(2026, 12, 15, 9, 0, 0, 0, time.UTC)}, Allow},
		{"escalated", Request{Agent: reportBot, Task: "nightly-report", Params: map[string]string{"region": "us"}, Now: time.Date(2026, 12, 15, 9, 0, 0, 0, time.UTC)}, Allow},
		{"approval", Request{Agent: reportBot, Task: "nightly-report", Params: map[string]string{"region": "eu"}, Now: time.Date(2026, 12, 15, 20, 0, 0, 0, time.UTC)}, ApprovalRequired},
		{"frozen", Request{Agent: reportBot, Task: "nightly-report", Params: map[string]string{"region": "eu"}, Now: time.Date(2026, 12, 29, 9, 0, 0, 0, time.UTC)}, Deny},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			if d := p.Evaluate(c.req); d.Outcome != c.want {
				b.Fatalf("outcome %s, want %s: %+v", d.Outcome, c.want, d.Reasons)
			}
			b.ReportAllocs()
			for b.Loop() {
				p.Evaluate(c.req)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
		})
	}
}
