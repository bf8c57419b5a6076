package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
)

func revocationQueue(t *testing.T, h Harness) {
	s := h.open(t)
	ctx := context.Background()
	rev := func(id string, in time.Duration) broker.Revocation {
		return broker.Revocation{LeaseID: id, Reason: "quarantine", Actor: "ops", NextAttempt: T0.Add(in)}
	}
	Apply(t, s, broker.Change{Enqueue: []broker.Revocation{rev("C", 3*time.Second), rev("A", time.Second), rev("B", 2*time.Second), rev("Z", time.Hour)}})

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
	if got := due(T0.Add(2*time.Second), 0); !slices.Equal(got, []string{"A", "B"}) { // NextAttempt == now is due
		t.Errorf("due at +2s = %v, want [A B]", got)
	}
	if got := due(T0.Add(time.Minute), 2); !slices.Equal(got, []string{"A", "B"}) {
		t.Errorf("due with limit 2 = %v", got)
	}
	if got := due(time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC), 0); len(got) != 4 { // past what a time index can hold
		t.Errorf("due at the end of time = %v, want all four", got)
	}
	if n, err := s.QueueDepth(ctx); err != nil || n != 4 {
		t.Errorf("QueueDepth = %d, %v; want 4", n, err)
	}

	// A failed attempt re-enqueues A with backoff: its old due entry goes.
	retry := rev("A", time.Minute)
	retry.Attempts, retry.LastError = 1, "vault sealed"
	Apply(t, s, broker.Change{Enqueue: []broker.Revocation{retry}})
	if got := due(T0.Add(10*time.Second), 0); !slices.Equal(got, []string{"B", "C"}) {
		t.Errorf("due after backoff = %v, want [B C]", got)
	}
	rs, _ := s.DueRevocations(ctx, T0.Add(2*time.Minute), 0)
	if len(rs) != 3 || rs[2].LeaseID != "A" || rs[2].Attempts != 1 || rs[2].LastError != "vault sealed" {
		t.Errorf("due at +2m = %+v", rs)
	}

	// Dequeue removes the record and its due entry; unknown IDs are fine.
	Apply(t, s, broker.Change{Dequeue: []string{"B", "C", "never-queued"}})
	if got := due(T0.Add(2*time.Hour), 0); !slices.Equal(got, []string{"A", "Z"}) {
		t.Errorf("due after dequeue = %v, want [A Z]", got)
	}
	if n, _ := s.QueueDepth(ctx); n != 2 {
		t.Errorf("QueueDepth = %d, want 2", n)
	}
}

func agentsAndFreeze(t *testing.T, h Harness) {
	s := h.open(t)
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

	paused := broker.AgentRecord{ID: "b", State: broker.AgentPaused, Reason: "odd traffic", Actor: "ops", ChangedAt: T0}
	Apply(t, s, broker.Change{
		AgentStates: []broker.AgentRecord{paused},
		Uses:        []broker.Use{{Agent: "a", Template: "t", At: T0}},
		Freeze:      &broker.FreezeState{Active: true, Reason: "incident", Actor: "ops", Since: T0},
	})
	if rec, _ := s.Agent(ctx, "b"); rec.State != broker.AgentPaused || rec.Reason != "odd traffic" || !rec.ChangedAt.Equal(T0) {
		t.Errorf("Agent(b) = %+v", rec)
	}
	as, _ := s.Agents(ctx)
	if len(as) != 2 || as[0].ID != "a" || as[1].ID != "b" {
		t.Errorf("Agents = %+v", as)
	}
	if fs, _ := s.Freeze(ctx); !fs.Active || fs.Reason != "incident" || !fs.Since.Equal(T0) {
		t.Errorf("Freeze = %+v", fs)
	}
	Apply(t, s, broker.Change{Freeze: &broker.FreezeState{}})
	if fs, _ := s.Freeze(ctx); fs.Active {
		t.Errorf("Freeze after unfreeze = %+v", fs)
	}
}

func events(t *testing.T, h Harness) {
	s := h.open(t)
	ctx := context.Background()
	if last, err := s.LastEvent(ctx); err != nil || last != nil {
		t.Errorf("LastEvent on an empty log = %v, %v", last, err)
	}
	const n = 549 // past page boundaries (boltstore reads 256 at a time)
	for i := 0; i < n; i += 10 {
		var evs []broker.Event
		for j := i; j < i+10 && j < n; j++ {
			evs = append(evs, Ev(broker.EventRequest, fmt.Sprint(j)))
		}
		Apply(t, s, broker.Change{Events: evs})
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

func closed(t *testing.T, h Harness) {
	s := h.open(t)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	_, err := s.Apply(ctx, broker.Change{Events: []broker.Event{Ev(broker.EventFreeze, "")}})
	if !errors.Is(err, broker.ErrStoreUnavailable) {
		t.Errorf("Apply after Close: err = %v, want ErrStoreUnavailable", err)
	}
	if _, err := s.Lease(ctx, "L1"); !errors.Is(err, broker.ErrStoreUnavailable) {
		t.Errorf("Lease after Close: err = %v, want ErrStoreUnavailable", err)
	}
	if _, err := s.Leases(ctx, broker.LeaseFilter{}); !errors.Is(err, broker.ErrStoreUnavailable) {
		t.Errorf("Leases after Close: err = %v, want ErrStoreUnavailable", err)
	}
	if err := s.Events(ctx, 0, func(broker.Event) (bool, error) { return true, nil }); !errors.Is(err, broker.ErrStoreUnavailable) {
		t.Errorf("Events after Close: err = %v, want ErrStoreUnavailable", err)
	}
}
