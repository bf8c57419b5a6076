package boltstore

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
)

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
			c.PutLeases = append(c.PutLeases, lease(g.Next(), "busy-agent", "t", st, t0.Add(time.Hour)))
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
