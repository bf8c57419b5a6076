package boltstore

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/latchbroker/latch/broker"
)

func TestApply_Context(t *testing.T) {
	// A change still waiting for its batch when the deadline passes is
	// withdrawn: Apply returns at the deadline and the batch, when it
	// runs, writes nothing of it.
	t.Run("DeadlineWhileQueued", func(t *testing.T) {
		s := openTest(t, Options{BatchDelay: 300 * time.Millisecond})
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := s.Apply(ctx, broker.Change{Events: []broker.Event{ev(broker.EventFreeze, "")}})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want DeadlineExceeded", err)
		}
		if d := time.Since(start); d > 200*time.Millisecond {
			t.Errorf("Apply returned after %s, want about the 20ms deadline", d)
		}
		// A later change commits; the withdrawn one never does.
		evs := apply(t, s, broker.Change{Events: []broker.Event{ev(broker.EventUnfreeze, "")}})
		if evs[0].Seq != 1 {
			t.Errorf("next event has seq %d, want 1: the withdrawn change was written", evs[0].Seq)
		}
	})
}

// TestApply_HeadRolledBack checks that Apply refuses to fork the chain when
// the audit head is behind the log (a restored meta, a bad edit).
func TestApply_HeadRolledBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "latch.db")
	s := openAt(t, path, Options{})
	for i := 0; i < 3; i++ {
		apply(t, s, broker.Change{Events: []broker.Event{ev(broker.EventConfigLoad, "")}})
	}
	s.db.Update(func(tx *bolt.Tx) error {
		return putHead(tx.Bucket(bktMeta), auditHead{seq: 1, hash: "x"})
	})
	_, err := s.Apply(context.Background(), broker.Change{Events: []broker.Event{ev(broker.EventFreeze, "")}})
	if !errors.Is(err, ErrCorrupt) || !errors.Is(err, broker.ErrStoreUnavailable) {
		t.Errorf("Apply over a rolled-back head: err = %v, want ErrCorrupt and ErrStoreUnavailable", err)
	}
}

// TestApply_IntentKeys checks where an intent's key lives: in the
// in-flight index while it is one, in the live index once its lease
// commits — and that an intent of a file written before the in-flight
// index (its key in the live index) still counts toward the budget and
// ends as cleanly.
func TestApply_IntentKeys(t *testing.T) {
	const agent = "spiffe://example.org/agent/a"
	keys := func(t *testing.T, s *Store, bkt []byte) (n int) {
		t.Helper()
		s.db.View(func(tx *bolt.Tx) error {
			n = tx.Bucket(bkt).Stats().KeyN
			return nil
		})
		return n
	}
	for _, old := range []bool{false, true} {
		t.Run(map[bool]string{false: "Current", true: "OlderFile"}[old], func(t *testing.T) {
			s := openTest(t, Options{})
			g := newIDs()
			l := lease(g.Next(), agent, "report", broker.StatePending, t0.Add(time.Hour))
			apply(t, s, broker.Change{PutIntents: []*broker.Lease{l}})
			if old {
				// Move the key where an older latch wrote it.
				s.db.Update(func(tx *bolt.Tx) error {
					k := pairKey(agent, l.ID)
					v := tx.Bucket(bktIdxInflight).Get(k)
					if err := tx.Bucket(bktIdxLive).Put(k, append([]byte(nil), v...)); err != nil {
						return err
					}
					return tx.Bucket(bktIdxInflight).Delete(k)
				})
			}
			if live, inflight := keys(t, s, bktIdxLive), keys(t, s, bktIdxInflight); live+inflight != 1 || (old != (live == 1)) {
				t.Fatalf("an intent: %d live keys, %d in flight", live, inflight)
			}
			second := lease(g.Next(), agent, "report", broker.StatePending, t0.Add(time.Hour))
			_, err := s.Apply(context.Background(), broker.Change{PutIntents: []*broker.Lease{second},
				Conditions: &broker.Conditions{Agent: agent, MaxActive: 1}})
			if f, ok := errors.AsType[*broker.ConditionFailed](err); !ok || f.Reason != broker.ReasonAgentBudget || f.Held != 1 {
				t.Fatalf("a second intent over a budget of 1: err = %v, want agent_budget with 1 held", err)
			}
			l.State = broker.StateActive
			apply(t, s, broker.Change{DeleteIntents: []string{l.ID}, PutLeases: []*broker.Lease{l}})
			if live, inflight := keys(t, s, bktIdxLive), keys(t, s, bktIdxInflight); live != 1 || inflight != 0 {
				t.Fatalf("its lease committed: %d live keys, %d in flight; want 1 and 0", live, inflight)
			}
			l.State = broker.StateRevoked
			apply(t, s, broker.Change{PutLeases: []*broker.Lease{l}})
			if live := keys(t, s, bktIdxLive); live != 0 {
				t.Fatalf("revoked: %d live keys, want 0", live)
			}
		})
	}
}
