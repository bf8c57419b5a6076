package storetest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
)

// groupMarks: a retired group fails the changes whose conditions name
// it, is listed with its backend and time, names its live leases in
// PolicyUse, and is gone once forgotten; a mark without a backend is
// refused.
func groupMarks(t *testing.T, h Harness) {
	s := h.open(t)
	ctx := context.Background()
	g := NewIDs()
	in := Lease(g.Next(), "agent-1", "rotate", broker.StatePending, T0.Add(time.Hour))
	in.Refs = broker.Refs{Group: "g-1"}
	Apply(t, s, broker.Change{PutIntents: []*broker.Lease{in}})
	if use, err := s.PolicyUse(ctx); err != nil || !use.LiveGroups["g-1"] {
		t.Fatalf("PolicyUse = %+v, %v; want g-1 live", use, err)
	}
	if _, err := s.Apply(ctx, broker.Change{RetireGroups: []broker.RetiredGroup{{Group: "g-1"}}}); !errors.Is(err, broker.ErrInvalidChange) {
		t.Fatalf("a mark without a backend: %v", err)
	}
	Apply(t, s, broker.Change{RetireGroups: []broker.RetiredGroup{{Group: "g-1", Backend: "tokens"}}})
	marks, err := s.RetiredGroups(ctx)
	if err != nil || len(marks) != 1 || marks[0] != (broker.RetiredGroup{Group: "g-1", Backend: "tokens", At: T0.UTC()}) {
		t.Fatalf("RetiredGroups = %+v, %v", marks, err)
	}
	next := Lease(g.Next(), "agent-1", "rotate", broker.StatePending, T0.Add(time.Hour))
	_, err = s.Apply(ctx, broker.Change{PutIntents: []*broker.Lease{next}, Conditions: &broker.Conditions{Group: "g-1"}})
	var failed *broker.ConditionFailed
	if !errors.As(err, &failed) || failed.Reason != broker.ReasonGroupRetired {
		t.Fatalf("a change in a retired group: %v, want group_retired", err)
	}
	Apply(t, s, broker.Change{PutIntents: []*broker.Lease{next}, Conditions: &broker.Conditions{Group: "g-2"}})
	Apply(t, s, broker.Change{ForgetGroups: []string{"g-1"}})
	if marks, err := s.RetiredGroups(ctx); err != nil || len(marks) != 0 {
		t.Fatalf("RetiredGroups after forgetting = %+v, %v", marks, err)
	}
}

// policyMarks: a policy an intent names cannot be marked.
func policyMarks(t *testing.T, h Harness) {
	s := h.open(t)
	ctx := context.Background()
	g := NewIDs()
	in := Lease(g.Next(), "agent-1", "rotate", broker.StatePending, T0.Add(time.Hour))
	in.Refs = broker.Refs{Policy: "p-1"}
	Apply(t, s, broker.Change{PutIntents: []*broker.Lease{in}})
	_, err := s.Apply(ctx, broker.Change{MarkDeleting: []string{"p-1"}})
	var failed *broker.ConditionFailed
	if !errors.As(err, &failed) || failed.Reason != broker.ReasonPolicyInUse {
		t.Fatalf("mark of a policy an intent names: %v", err)
	}
}

// policyMarkRace: intents naming a policy and marks of it race; a
// mark never succeeds while an intent names the policy, and no intent
// is written while it is marked.
func policyMarkRace(t *testing.T, h Harness) {
	s := h.open(t)
	ctx := context.Background()
	g := NewIDs()
	stop := make(chan struct{})
	var bad int
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			_, err := s.Apply(ctx, broker.Change{MarkDeleting: []string{"p-1"}})
			if err == nil {
				ins, _ := s.Intents(ctx)
				for _, in := range ins {
					if in.Refs.Policy == "p-1" {
						bad++ // written before the mark, or during it
					}
				}
				s.Apply(ctx, broker.Change{DoneDeleting: []string{"p-1"}})
			}
		}
	}()
	for i := 0; i < 2000; i++ {
		in := Lease(g.Next(), "agent-1", "rotate", broker.StatePending, T0.Add(time.Hour))
		in.Refs = broker.Refs{Policy: "p-1"}
		_, err := s.Apply(ctx, broker.Change{PutIntents: []*broker.Lease{in}, Conditions: &broker.Conditions{Policy: "p-1"}})
		if err == nil {
			s.Apply(ctx, broker.Change{DeleteIntents: []string{in.ID}})
		}
	}
	close(stop)
	<-done
	if bad > 0 {
		t.Fatalf("%d times a mark held while an intent named the policy", bad)
	}
}
