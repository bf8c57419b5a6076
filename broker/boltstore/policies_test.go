package boltstore

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
)

// TestPolicyMarks: a policy an intent names cannot be marked.
func TestPolicyMarks(t *testing.T) {
	s := openTest(t, Options{})
	ctx := context.Background()
	g := newIDs()
	in := lease(g.next(), "agent-1", "rotate", broker.StatePending, t0.Add(time.Hour))
	in.Refs = broker.Refs{Policy: "p-1"}
	apply(t, s, broker.Change{PutIntents: []*broker.Lease{in}})
	_, err := s.Apply(ctx, broker.Change{MarkDeleting: []string{"p-1"}})
	var failed *broker.ConditionFailed
	if !errors.As(err, &failed) || failed.Reason != broker.ReasonPolicyInUse {
		t.Fatalf("mark of a policy an intent names: %v", err)
	}
}

// TestPolicyMarkRace: intents naming a policy and marks of it race; a
// mark never succeeds while an intent names the policy, and no intent
// is written while it is marked.
func TestPolicyMarkRace(t *testing.T) {
	s := openTest(t, Options{})
	ctx := context.Background()
	g := newIDs()
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
		in := lease(g.next(), "agent-1", "rotate", broker.StatePending, t0.Add(time.Hour))
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
