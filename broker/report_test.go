package broker_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker/brokertest"
)

// TestReport: each grant of the policy with its last use, and since when
// it is granted, kept across reloads; Idle is what --unused filters on.
func TestReport(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	t0 := f.clock.Now()
	if err := f.svc.SetPolicy(ctx, loadPolicy(t), "test"); err != nil {
		t.Fatal(err)
	}
	f.clock.Add(time.Hour)
	f.issue(t, "spiffe://example.org/agent/report-a", "report", map[string]string{"region": "eu"})
	f.clock.Add(40 * 24 * time.Hour)
	f.issue(t, "spiffe://example.org/agent/report-b", "report", map[string]string{"region": "eu"})
	f.issue(t, "spiffe://example.org/agent/report-b", "report", map[string]string{"region": "us"})
	f.issue(t, "spiffe://example.org/agent/ticket-bot", "report", map[string]string{"region": "eu"})
	now := f.clock.Now()

	// A reload that adds one grant: the others keep their Since.
	more := strings.Replace(brokertest.Policy, "templates: [report]\n    rate: 2/m", "templates: [report, budgeted]\n    rate: 2/m", 1)
	if err := f.svc.SetPolicy(ctx, brokertest.LoadPolicy(t, more, brokertest.Templates), "test"); err != nil {
		t.Fatal(err)
	}

	inv, err := f.svc.Report(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !inv.At.Equal(now) {
		t.Fatalf("report at %v, want %v", inv.At, now)
	}
	got := inv.Grants
	type row struct {
		agent, template string
		since, last     time.Time
		lastAgent       string
		agents          int
	}
	want := []row{
		{"spiffe://example.org/agent/report-*", "report", t0, now, "spiffe://example.org/agent/report-b", 2},
		{"spiffe://example.org/agent/ticket-bot", "ticket", t0, time.Time{}, "", 0},
		{"spiffe://example.org/agent/ticket-bot", "report", t0, now, "spiffe://example.org/agent/ticket-bot", 1},
		{"spiffe://example.org/agent/chatty", "report", t0, time.Time{}, "", 0},
		{"spiffe://example.org/agent/chatty", "budgeted", now, time.Time{}, "", 0},
		{"spiffe://example.org/agent/hoarder", "report", t0, time.Time{}, "", 0},
		{"spiffe://example.org/agent/hoarder", "budgeted", t0, time.Time{}, "", 0},
	}
	if len(got) != len(want) {
		t.Fatalf("report has %d grants, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		g := got[i]
		r := row{g.Agent, g.Template, g.Since, g.LastUsed, g.LastAgent, g.Agents}
		if !r.since.Equal(w.since) || !r.last.Equal(w.last) {
			t.Errorf("grant %d = %+v, want %+v", i, r, w)
			continue
		}
		r.since, r.last = w.since, w.last
		if r != w {
			t.Errorf("grant %d = %+v, want %+v", i, r, w)
		}
		if g.Owner != "spiffe://example.org/ops/bob" {
			t.Errorf("grant %d owner = %q", i, g.Owner)
		}
	}
	// report-* was used 40 days ago by report-a and just now by report-b.
	if d := got[0].Idle(now); d != 0 {
		t.Errorf("report-* idle %v, want 0", d)
	}
	if d := got[1].Idle(now); d != 40*24*time.Hour+time.Hour {
		t.Errorf("never-used ticket grant idle %v, want since it was granted", d)
	}
	if d := got[4].Idle(now); d != 0 {
		t.Errorf("grant added now idle %v, want 0", d)
	}
	var unused []string
	for _, g := range inv.Unused(30 * 24 * time.Hour) {
		unused = append(unused, strings.TrimPrefix(g.Agent, "spiffe://example.org/agent/")+"×"+g.Template)
	}
	if got, want := strings.Join(unused, " "), "ticket-bot×ticket chatty×report hoarder×report hoarder×budgeted"; got != want {
		t.Errorf("unused for 30 days: %s, want %s", got, want)
	}
}

// TestReport_ForgetsRevokedGrants: an agent's use of a template no longer
// granted to it is not reported.
func TestReport_ForgetsRevokedGrants(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.issue(t, "spiffe://example.org/agent/ticket-bot", "report", map[string]string{"region": "eu"})
	less := strings.Replace(brokertest.Policy, "templates: [ticket, report]", "templates: [ticket]", 1)
	if err := f.svc.SetPolicy(ctx, brokertest.LoadPolicy(t, less, brokertest.Templates), "test"); err != nil {
		t.Fatal(err)
	}
	inv, err := f.svc.Report(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range inv.Grants {
		if g.Agent == "spiffe://example.org/agent/ticket-bot" && g.Template == "report" {
			t.Fatalf("revoked grant still reported: %+v", g)
		}
		if !g.LastUsed.IsZero() {
			t.Fatalf("grant %s × %s reports a use: %+v", g.Agent, g.Template, g)
		}
	}
}
