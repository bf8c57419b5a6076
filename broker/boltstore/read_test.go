package boltstore

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
)

// TestLeases_Filters compares every index path with a brute-force filter
// over all leases.
func TestLeases_Filters(t *testing.T) {
	s := openTest(t, Options{})
	ctx := context.Background()
	g := newIDs()
	states := []broker.LeaseState{
		broker.StatePending, broker.StateActive, broker.StateRevoking, broker.StateRevoked,
		broker.StateExpired, broker.StateFailed, broker.StateIrrevocable,
	}
	var all []*broker.Lease // oldest first
	var c broker.Change
	for i := 0; i < 300; i++ {
		l := lease(g.next(), fmt.Sprintf("agent-%d", i%7), fmt.Sprintf("task-%d", i%5), states[i%len(states)], t0.Add(time.Duration(i)*time.Second))
		all = append(all, l)
		c.PutLeases = append(c.PutLeases, l)
	}
	// Agent IDs that prefix each other must not leak into each other.
	l := lease(g.next(), "agent-1x", "task-1", broker.StateActive, t0.Add(time.Hour))
	all = append(all, l)
	c.PutLeases = append(c.PutLeases, l)
	apply(t, s, c)

	filters := []broker.LeaseFilter{
		{},
		{Limit: 10},
		{Agent: "agent-1"},
		{Agent: "agent-1", LiveOnly: true},
		{Agent: "agent-1", State: broker.StateRevoked},
		{Agent: "agent-3", Task: "task-2"},
		{Agent: "agent-3", Task: "task-2", LiveOnly: true, Limit: 2},
		{Agent: "nobody"},
		{Task: "task-1"},
		{Task: "task-1", State: broker.StateActive, Limit: 3},
		{State: broker.StateIrrevocable},
		{State: broker.StateRevoked, LiveOnly: true},
		{State: broker.StateActive, LiveOnly: true},
		{LiveOnly: true},
		{LiveOnly: true, Limit: 7},
	}
	// Small pages make every listing resume across transactions.
	defer func(n int) { listPage = n }(listPage)
	for _, page := range []int{listPage, 1, 3} {
		listPage = page
		for _, f := range filters {
			t.Run(fmt.Sprintf("page=%d/%+v", page, f), func(t *testing.T) {
				var want []string
				for i := len(all) - 1; i >= 0; i-- {
					if f.Match(all[i]) && (f.Limit == 0 || len(want) < f.Limit) {
						want = append(want, all[i].ID)
					}
				}
				got, err := s.Leases(ctx, f)
				if err != nil {
					t.Fatal(err)
				}
				if ids := leaseIDs(got); !slices.Equal(ids, want) && len(ids)+len(want) > 0 {
					t.Errorf("Leases = %v\nwant     %v", ids, want)
				}
			})
		}
	}
}

func TestExpiringBefore(t *testing.T) {
	s := openTest(t, Options{})
	ctx := context.Background()
	g := newIDs()
	mk := func(st broker.LeaseState, in time.Duration) *broker.Lease {
		return lease(g.next(), "a", "t", st, t0.Add(in))
	}
	// Inserted out of expiry order; the old one expired before 1970 to
	// check the sign handling of time keys.
	l30, l10, lRevoking, l20, lOld, lLater := mk(broker.StateActive, 30*time.Second), mk(broker.StateActive, 10*time.Second),
		mk(broker.StateRevoking, time.Second), mk(broker.StateActive, 20*time.Second), mk(broker.StateActive, 0), mk(broker.StateActive, time.Hour)
	lOld.ExpiresAt = time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC)
	apply(t, s, broker.Change{PutLeases: []*broker.Lease{l30, l10, lRevoking, l20, lOld, lLater}})

	tests := []struct {
		before time.Time
		limit  int
		want   []string
	}{
		{t0.Add(time.Minute), 0, []string{lOld.ID, l10.ID, l20.ID, l30.ID}},
		{t0.Add(time.Minute), 2, []string{lOld.ID, l10.ID}},
		{t0.Add(20 * time.Second), 0, []string{lOld.ID, l10.ID}}, // strictly before
		{t0, 0, []string{lOld.ID}},
		{time.Time{}, 0, nil},
	}
	for _, tt := range tests {
		got, err := s.ExpiringBefore(ctx, tt.before, tt.limit)
		if err != nil {
			t.Fatal(err)
		}
		if ids := leaseIDs(got); !slices.Equal(ids, tt.want) && len(ids)+len(tt.want) > 0 {
			t.Errorf("ExpiringBefore(%s, %d) = %v, want %v", tt.before, tt.limit, ids, tt.want)
		}
	}
}

func TestRevocationQueue(t *testing.T) {
	s := openTest(t, Options{})
	ctx := context.Background()
	rev := func(id string, in time.Duration) broker.Revocation {
		return broker.Revocation{LeaseID: id, Reason: "quarantine", Actor: "ops", NextAttempt: t0.Add(in)}
	}
	apply(t, s, broker.Change{Enqueue: []broker.Revocation{rev("C", 3*time.Second), rev("A", time.Second), rev("B", 2*time.Second), rev("Z", time.Hour)}})

	due := func(now time.Time, limit int) []string {
		t.Helper()
		rs, err := s.DueRevocations(ctx, now, limit)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, r := range rs {
			ids = append(ids, r.LeaseID)
		}
		return ids
	}
	if got := due(t0.Add(2*time.Second), 0); !slices.Equal(got, []string{"A", "B"}) { // NextAttempt == now is due
		t.Errorf("due at +2s = %v, want [A B]", got)
	}
	if got := due(t0.Add(time.Minute), 2); !slices.Equal(got, []string{"A", "B"}) {
		t.Errorf("due with limit 2 = %v", got)
	}
	if n, err := s.QueueDepth(ctx); err != nil || n != 4 {
		t.Errorf("QueueDepth = %d, %v; want 4", n, err)
	}

	// A failed attempt re-enqueues A with backoff: its old due entry goes.
	retry := rev("A", time.Minute)
	retry.Attempts, retry.LastError = 1, "vault sealed"
	apply(t, s, broker.Change{Enqueue: []broker.Revocation{retry}})
	if got := due(t0.Add(10*time.Second), 0); !slices.Equal(got, []string{"B", "C"}) {
		t.Errorf("due after backoff = %v, want [B C]", got)
	}
	rs, _ := s.DueRevocations(ctx, t0.Add(2*time.Minute), 0)
	if len(rs) != 3 || rs[2].LeaseID != "A" || rs[2].Attempts != 1 || rs[2].LastError != "vault sealed" {
		t.Errorf("due at +2m = %+v", rs)
	}

	// Dequeue removes the record and its due entry; unknown IDs are fine.
	apply(t, s, broker.Change{Dequeue: []string{"B", "C", "never-queued"}})
	if got := due(t0.Add(2*time.Hour), 0); !slices.Equal(got, []string{"A", "Z"}) {
		t.Errorf("due after dequeue = %v, want [A Z]", got)
	}
	if n, _ := s.QueueDepth(ctx); n != 2 {
		t.Errorf("QueueDepth = %d, want 2", n)
	}
}

func TestAgentsAndFreeze(t *testing.T) {
	s := openTest(t, Options{})
	ctx := context.Background()

	rec, err := s.Agent(ctx, "spiffe://example.org/agent/new")
	if err != nil || rec.State != broker.AgentActive || rec.ID != "spiffe://example.org/agent/new" {
		t.Errorf("unknown agent = %+v, %v", rec, err)
	}
	if as, err := s.Agents(ctx); err != nil || len(as) != 0 {
		t.Errorf("Agents on an empty store = %+v, %v", as, err)
	}
	if fs, err := s.Freeze(ctx); err != nil || fs.Active {
		t.Errorf("Freeze on an empty store = %+v, %v", fs, err)
	}

	paused := broker.AgentRecord{ID: "b", State: broker.AgentPaused, Reason: "odd traffic", Actor: "ops", ChangedAt: t0}
	apply(t, s, broker.Change{
		AgentStates: []broker.AgentRecord{paused},
		Uses:        []broker.Use{{Agent: "a", Template: "t", At: t0}},
		Freeze:      &broker.FreezeState{Active: true, Reason: "incident", Actor: "ops", Since: t0},
	})
	if rec, _ := s.Agent(ctx, "b"); rec.State != broker.AgentPaused || rec.Reason != "odd traffic" || !rec.ChangedAt.Equal(t0) {
		t.Errorf("Agent(b) = %+v", rec)
	}
	as, _ := s.Agents(ctx)
	if len(as) != 2 || as[0].ID != "a" || as[1].ID != "b" {
		t.Errorf("Agents = %+v", as)
	}
	if fs, _ := s.Freeze(ctx); !fs.Active || fs.Reason != "incident" || !fs.Since.Equal(t0) {
		t.Errorf("Freeze = %+v", fs)
	}
	apply(t, s, broker.Change{Freeze: &broker.FreezeState{}})
	if fs, _ := s.Freeze(ctx); fs.Active {
		t.Errorf("Freeze after unfreeze = %+v", fs)
	}
}

func TestEvents(t *testing.T) {
	s := openTest(t, Options{})
	ctx := context.Background()
	if last, err := s.LastEvent(ctx); err != nil || last != nil {
		t.Errorf("LastEvent on an empty log = %v, %v", last, err)
	}
	const n = 2*eventPage + 37 // cross page boundaries
	for i := 0; i < n; i += 10 {
		var evs []broker.Event
		for j := i; j < i+10 && j < n; j++ {
			evs = append(evs, ev(broker.EventRequest, fmt.Sprint(j)))
		}
		apply(t, s, broker.Change{Events: evs})
	}
	collect := func(after uint64, stopAt uint64) []uint64 {
		t.Helper()
		var seqs []uint64
		err := s.Events(ctx, after, func(e broker.Event) (bool, error) {
			seqs = append(seqs, e.Seq)
			return e.Seq != stopAt, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return seqs
	}
	for _, after := range []uint64{0, 1, 255, 256, 300, n - 1, n, n + 5, 1<<64 - 1} {
		got := collect(after, 0)
		var want []uint64
		for q := after + 1; q <= n && after < n; q++ {
			want = append(want, q)
		}
		if !slices.Equal(got, want) {
			t.Errorf("Events(after %d): %d events [%v…], want %d", after, len(got), head(got), len(want))
		}
	}
	if got := collect(10, 270); len(got) != 260 || got[len(got)-1] != 270 {
		t.Errorf("Events stopped by fn: got %d events ending %v", len(got), got[len(got)-1])
	}
	boom := fmt.Errorf("boom")
	if err := s.Events(ctx, 0, func(broker.Event) (bool, error) { return true, boom }); err != boom {
		t.Errorf("Events returns fn's error: got %v", err)
	}
	last, err := s.LastEvent(ctx)
	if err != nil || last.Seq != n || last.Lease != fmt.Sprint(n-1) {
		t.Errorf("LastEvent = %+v, %v", last, err)
	}
}

func head(s []uint64) []uint64 { return s[:min(len(s), 3)] }

// TestLeases_BoundedMemory checks that a limited query over a large store
// allocates for what it returns, not for what it walks past: an agent with
// thousands of dead leases and a few live ones.
func TestLeases_BoundedMemory(t *testing.T) {
	s := openTest(t, Options{})
	ctx := context.Background()
	g := newIDs()
	for batch := 0; batch < 20; batch++ {
		var c broker.Change
		for i := 0; i < 1000; i++ {
			st := broker.StateRevoked
			if batch == 0 && i < 5 {
				st = broker.StateActive // the oldest: a scan must walk past all the dead ones
			}
			c.PutLeases = append(c.PutLeases, lease(g.next(), "busy-agent", "t", st, t0.Add(time.Hour)))
		}
		apply(t, s, c)
	}
	measure := func(f broker.LeaseFilter) (allocBytes uint64, n int) {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		ls, err := s.Leases(ctx, f)
		runtime.ReadMemStats(&after)
		if err != nil {
			t.Fatal(err)
		}
		return after.TotalAlloc - before.TotalAlloc, len(ls)
	}
	for _, f := range []broker.LeaseFilter{
		{Agent: "busy-agent", LiveOnly: true},
		{Agent: "busy-agent", Limit: 5},
		{LiveOnly: true},
		{Limit: 5},
	} {
		b, n := measure(f)
		if n != 5 {
			t.Errorf("Leases(%+v) returned %d, want 5", f, n)
		}
		// 5 decoded leases are a few KB; walking 20,000 index keys must
		// not add per-key garbage.
		if b > 64<<10 {
			t.Errorf("Leases(%+v) allocated %d bytes for 5 leases out of 20,000", f, b)
		}
	}
}

// TestGrants: a Change with Grants replaces them, one without keeps them,
// and a read-only open reads them.
func TestGrants(t *testing.T) {
	s := openTest(t, Options{})
	ctx := context.Background()
	if gs, err := s.Grants(ctx); err != nil || len(gs) != 0 {
		t.Fatalf("grants of a new store = %v, %v; want none", gs, err)
	}
	want := []broker.Grant{{Agent: "spiffe://x/a-*", Template: "t1", Since: t0}, {Agent: "spiffe://x/b", Template: "t2", Since: t0.Add(time.Hour)}}
	apply(t, s, broker.Change{Grants: want})
	apply(t, s, broker.Change{Events: []broker.Event{{Type: broker.EventConfigLoad}}})
	got, err := s.Grants(ctx)
	if err != nil || len(got) != 2 || got[0] != want[0] || !got[1].Since.Equal(want[1].Since) || got[1].Template != "t2" {
		t.Fatalf("grants = %+v, %v; want %+v", got, err, want)
	}
	path := s.path
	s.Close()
	ro, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if got, err := ro.Grants(ctx); err != nil || len(got) != 2 {
		t.Fatalf("read-only grants = %+v, %v", got, err)
	}
}

// TestCountByTask compares the index count with a brute-force count over
// all leases, after state changes, with task names that prefix each other.
func TestCountByTask(t *testing.T) {
	s := openTest(t, Options{})
	ctx := context.Background()
	g := newIDs()
	states := []broker.LeaseState{broker.StateActive, broker.StateActive, broker.StateRevoked, broker.StateExpired, broker.StateRevoking}
	var c broker.Change
	for i := range 200 {
		task := []string{"task", "task-1", "task-1x", "t"}[i%4]
		c.PutLeases = append(c.PutLeases, lease(g.next(), "agent", task, states[i%len(states)], t0.Add(time.Duration(i)*time.Second)))
	}
	apply(t, s, c)
	// Half the active leases are revoked: their index values change.
	var revoke broker.Change
	for i, l := range c.PutLeases {
		if l.State == broker.StateActive && i%2 == 0 {
			r := *l
			r.State = broker.StateRevoked
			revoke.PutLeases = append(revoke.PutLeases, &r)
		}
	}
	apply(t, s, revoke)

	all, err := s.Leases(ctx, broker.LeaseFilter{})
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range append(states, broker.StateFailed) {
		want := map[string]int{}
		for _, l := range all {
			if l.State == st {
				want[l.Task]++
			}
		}
		got, err := s.CountByTask(ctx, st)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("CountByTask(%s) = %v, want %v", st, got, want)
		}
	}
}
