package server

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker/api"
)

// TestServer_Report: after an agent fetches a ticket token, `latch report`
// shows that grant used by it and the others never used, with owners, and
// survives a restart.
func TestServer_Report(t *testing.T) {
	l := startLatch(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	agent := agentPrefix + "report-user"
	got := parseFetch(t, l.cli(ctx, nil, append([]string{"fetch", "--task", "close-ticket", "--param", "ticket=42",
		"--reason", "report test", "-o", "json"}, l.svidFiles(agent)...)...))
	readsTicket(ctx, t, got.Secret["token"], "42", "43")

	report := func() api.ReportResponse {
		t.Helper()
		r := l.cli(ctx, nil, append([]string{"report", "-o", "json"}, l.svidFiles(viewer)...)...)
		var res api.ReportResponse
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &res) != nil {
			t.Fatalf("latch report -o json: %s", r)
		}
		return res
	}
	check := func(res api.ReportResponse) {
		t.Helper()
		var rows []string
		for _, g := range res.Grants {
			if g.Owner != "spiffe://example.org/ops/bob" {
				t.Errorf("grant %+v: want owner bob", g)
			}
			rows = append(rows, g.Agent+" "+g.Template+" "+g.LastAgent)
		}
		want := []string{agentPrefix + "* close-ticket " + agent, agentPrefix + "* nightly-report "}
		if strings.Join(rows, "\n") != strings.Join(want, "\n") {
			t.Fatalf("report rows:\n%s\nwant:\n%s", strings.Join(rows, "\n"), strings.Join(want, "\n"))
		}
	}
	before := report()
	check(before)

	l.stop()
	l.start()
	after := report()
	check(after)
	if !after.Grants[0].LastUsed.Equal(before.Grants[0].LastUsed) || !after.Grants[1].Since.Equal(before.Grants[1].Since) {
		t.Fatalf("report changed across a restart:\nbefore %+v\nafter  %+v", before.Grants, after.Grants)
	}
	if r := l.cli(ctx, nil, "report", "--unused", "1h", "--admin-socket", l.socket); r.code != 0 || !strings.Contains(r.stderr, "no grant unused for 1h or more") {
		t.Fatalf("latch report --unused 1h over the admin socket: %s", r)
	}
}
