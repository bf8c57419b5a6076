package server

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker/api"
)

// raceFetches runs n `latch fetch` processes of a database task for agent
// at once, calls stop when the first has ended (the others are in flight
// then) and returns every fetch's result and when stop returned.
func raceFetches(ctx context.Context, t *testing.T, l *latch, agent string, n int, stop func()) ([]fetchOut, time.Time) {
	t.Helper()
	flags := l.svidFiles(agent)
	results := make(chan cliResult, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			results <- l.cli(ctx, nil, append([]string{"fetch", "-o", "json", "--task", "nightly-report",
				"--param", "region=eu", "--reason", "stop race"}, flags...)...)
		})
	}
	first := <-results
	stop()
	stopped := time.Now()
	wg.Wait()
	close(results)
	var issued []fetchOut
	for _, r := range append([]cliResult{first}, drain(results)...) {
		switch r.code {
		case 0:
			issued = append(issued, parseFetch(t, r))
		case 3: // denied: the stop won
		default:
			t.Fatalf("latch fetch during the stop: %s", r)
		}
	}
	return issued, stopped
}

func drain(ch <-chan cliResult) []cliResult {
	var out []cliResult
	for r := range ch {
		out = append(out, r)
	}
	return out
}

// activeLeases is `latch lease list --agent A --state active -o json`.
func (l *latch) activeLeases(ctx context.Context, t *testing.T, agent string) []api.Lease {
	t.Helper()
	r := l.cli(ctx, nil, "lease", "list", "--agent", agent, "--state", "active", "-o", "json", "--admin-socket", l.socket)
	var out api.LeasesResponse
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &out) != nil {
		t.Fatalf("latch lease list: %s", r)
	}
	return out.Leases
}

// TestServer_QuarantineWinsRace: 20 agents' fetches in flight while an
// operator quarantines the agent. Within 5 s of the quarantine returning,
// no database login minted for the agent works and none of its leases is
// active — those committed before it included.
func TestServer_QuarantineWinsRace(t *testing.T) {
	l := startLatch(t)
	e := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	agent := agentPrefix + "race-quarantine"
	issued, stopped := raceFetches(ctx, t, l, agent, 20, func() {
		if r := l.cli(ctx, nil, "agent", "quarantine", agent, "--reason", "stop race", "--admin-socket", l.socket); r.code != 0 {
			t.Fatalf("latch agent quarantine: %s", r)
		}
	})
	if len(issued) == 0 {
		t.Fatal("no fetch got through before the quarantine; the race was not run")
	}
	deadline := stopped.Add(5 * time.Second)
	for {
		working := 0
		for _, out := range issued {
			if who, err := e.PGLogin(ctx, out.Secret["username"], out.Secret["password"]); err == nil && who != "" {
				working++
			}
		}
		active := l.activeLeases(ctx, t, agent)
		if working == 0 && len(active) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("5 s after the quarantine: %d of %d database logins still work, %d leases active", working, len(issued), len(active))
		}
		time.Sleep(100 * time.Millisecond) // polling Vault and PostgreSQL, bounded by the deadline
	}
	t.Logf("%d of 20 fetches got a login before the quarantine; all revoked within %s", len(issued), time.Since(stopped).Round(time.Millisecond))
}

// TestServer_FreezeWinsRace: the same with `latch freeze start`. A freeze
// revokes nothing, so the logins issued before it keep working; what it
// guarantees is that no lease commits after it: no issue of the agent
// follows the freeze in the audit chain, and the next fetch is denied.
func TestServer_FreezeWinsRace(t *testing.T) {
	l := startLatch(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	agent := agentPrefix + "race-freeze"
	issued, _ := raceFetches(ctx, t, l, agent, 20, func() {
		if r := l.cli(ctx, nil, "freeze", "start", "--reason", "stop race", "--admin-socket", l.socket); r.code != 0 {
			t.Fatalf("latch freeze start: %s", r)
		}
	})
	t.Cleanup(func() {
		l.cli(context.Background(), nil, append([]string{"freeze", "end", "--reason", "test over"}, l.svidFiles(adminOp)...)...)
	})
	freeze := l.auditEvent(ctx, "freeze", "reason", "stop race")
	res, err := l.admin().Audit(ctx, api.AuditQuery{After: freeze.Seq, Agent: agent, Types: []string{"issue"}, Limit: api.MaxListLimit})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Events) != 0 {
		t.Fatalf("%d issues of %s committed after the freeze: %+v", len(res.Events), agent, res.Events)
	}
	if r := l.cli(ctx, nil, append([]string{"fetch", "--task", "nightly-report", "--param", "region=eu", "--reason", "after"},
		l.svidFiles(agent)...)...); r.code != 3 {
		t.Fatalf("fetch after the freeze: %s; want denied", r)
	}
	t.Logf("%d of 20 fetches committed before the freeze, none after", len(issued))
}
