package etcdstore

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/storetest"
)

// TestForgetEnded: the leases that ended before the cut are deleted with
// every index entry; those that ended after it, and the live ones, stay.
func TestForgetEnded(t *testing.T) {
	ctx := context.Background()
	s := newStore(t, testPrefix(t))
	g := storetest.NewIDs()
	t0 := storetest.T0
	lease := func(st broker.LeaseState, ended time.Duration, req string) *broker.Lease {
		l := storetest.Lease(g.Next(), "agent-1", "rotate", st, t0.Add(time.Hour))
		l.RequestID = req
		if st.Ended() {
			l.EndedAt = t0.Add(-ended)
		}
		return l
	}
	old, older := lease(broker.StateRevoked, 2*time.Hour, ""), lease(broker.StateFailed, 3*time.Hour, "r-1")
	recent, active, revoking := lease(broker.StateExpired, 30*time.Minute, ""), lease(broker.StateActive, 0, "r-2"), lease(broker.StateRevoking, 0, "")
	storetest.Apply(t, s, broker.Change{PutLeases: []*broker.Lease{old, older, recent, active, revoking}})

	n, err := s.ForgetEnded(ctx, t0.Add(-time.Hour), 0)
	if err != nil || n != 2 {
		t.Fatalf("ForgetEnded = %d, %v; want the 2 leases that ended over an hour before", n, err)
	}
	left, err := s.Leases(ctx, broker.LeaseFilter{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{revoking.ID, active.ID, recent.ID} // newest first
	if got := storetest.LeaseIDs(left); !slices.Equal(got, want) {
		t.Fatalf("leases left = %v, want %v", got, want)
	}
	if _, err := s.LeaseByRequest(ctx, "agent-1", "r-1"); !errors.Is(err, broker.ErrLeaseNotFound) {
		t.Fatalf("the request index of a forgotten lease: %v", err)
	}
	checkKeys(t, s, 3)
	v, err := s.view(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := v.count(s.k.indexAll(ixEnded)); err != nil || n != 1 {
		t.Fatalf("the ended index holds %d entries, want the recent lease's (%v)", n, err)
	}
	if n, err := s.ForgetEnded(ctx, t0, 0); err != nil || n != 1 {
		t.Fatalf("ForgetEnded up to now = %d, %v; want the recent one", n, err)
	}
}
