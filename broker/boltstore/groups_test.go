package boltstore

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
)

// TestGroupMarks: a retired group fails the changes whose conditions name
// it, is listed with its backend and time, names its live leases in
// PolicyUse, and is gone once forgotten; a mark without a backend is
// refused.
func TestGroupMarks(t *testing.T) {
	s := openTest(t, Options{})
	ctx := context.Background()
	g := newIDs()
	in := lease(g.next(), "agent-1", "rotate", broker.StatePending, t0.Add(time.Hour))
	in.Refs = broker.Refs{Group: "g-1"}
	apply(t, s, broker.Change{PutIntents: []*broker.Lease{in}})
	if use, err := s.PolicyUse(ctx); err != nil || !use.LiveGroups["g-1"] {
		t.Fatalf("PolicyUse = %+v, %v; want g-1 live", use, err)
	}
	if _, err := s.Apply(ctx, broker.Change{RetireGroups: []broker.RetiredGroup{{Group: "g-1"}}}); !errors.Is(err, ErrInvalidChange) {
		t.Fatalf("a mark without a backend: %v", err)
	}
	apply(t, s, broker.Change{RetireGroups: []broker.RetiredGroup{{Group: "g-1", Backend: "tokens"}}})
	marks, err := s.RetiredGroups(ctx)
	if err != nil || len(marks) != 1 || marks[0] != (broker.RetiredGroup{Group: "g-1", Backend: "tokens", At: s.now().UTC()}) {
		t.Fatalf("RetiredGroups = %+v, %v", marks, err)
	}
	next := lease(g.next(), "agent-1", "rotate", broker.StatePending, t0.Add(time.Hour))
	_, err = s.Apply(ctx, broker.Change{PutIntents: []*broker.Lease{next}, Conditions: &broker.Conditions{Group: "g-1"}})
	var failed *broker.ConditionFailed
	if !errors.As(err, &failed) || failed.Reason != broker.ReasonGroupRetired {
		t.Fatalf("a change in a retired group: %v, want group_retired", err)
	}
	apply(t, s, broker.Change{PutIntents: []*broker.Lease{next}, Conditions: &broker.Conditions{Group: "g-2"}})
	apply(t, s, broker.Change{ForgetGroups: []string{"g-1"}})
	if marks, err := s.RetiredGroups(ctx); err != nil || len(marks) != 0 {
		t.Fatalf("RetiredGroups after forgetting = %+v, %v", marks, err)
	}
}
