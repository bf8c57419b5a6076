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
