package boltstore

import (
	"fmt"
	"maps"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/latchbroker/latch/broker"
)

// indexSnapshot copies every index bucket's keys and values.
func indexSnapshot(t *testing.T, db *bolt.DB) map[string]string {
	t.Helper()
	out := map[string]string{}
	db.View(func(tx *bolt.Tx) error {
		for _, name := range indexBuckets {
			tx.Bucket(name).ForEach(func(k, v []byte) error {
				out[string(name)+"|"+string(k)] = string(v)
				return nil
			})
		}
		return nil
	})
	return out
}

// fillForReindex writes leases that exercise every index: all states,
// request IDs taken over by a retry, leases that changed state, and a
// revocation queue.
func fillForReindex(t *testing.T, s *Store) {
	g := newIDs()
	states := []broker.LeaseState{broker.StateActive, broker.StateRevoking, broker.StateRevoked, broker.StateExpired, broker.StateFailed, broker.StateIrrevocable}
	var c broker.Change
	for i := 0; i < 500; i++ {
		l := lease(g.Next(), fmt.Sprintf("agent-%d", i%13), fmt.Sprintf("task-%d", i%4), states[i%len(states)], t0.Add(time.Duration(i)*time.Second))
		l.RequestID = fmt.Sprintf("req-%d", i%50) // later leases take requests over
		c.PutLeases = append(c.PutLeases, l)
		if l.State == broker.StateRevoking {
			c.Enqueue = append(c.Enqueue, broker.Revocation{LeaseID: l.ID, NextAttempt: t0.Add(time.Duration(i) * time.Minute)})
		}
	}
	apply(t, s, c)
	// Move some through more states, so their old entries were replaced.
	for _, l := range c.PutLeases[:60] {
		l.State = broker.StateRevoked
	}
	apply(t, s, broker.Change{PutLeases: c.PutLeases[:60]})
}

func TestReindex(t *testing.T) {
	path := filepath.Join(t.TempDir(), "latch.db")
	s := openAt(t, path, Options{})
	fillForReindex(t, s)
	want := indexSnapshot(t, s.db)
	// Damage the indexes: a stale entry, a lost one, a wiped bucket.
	s.db.Update(func(tx *bolt.Tx) error {
		tx.Bucket(bktIdxState).Put(pairKey("active", "ghost"), nil)
		k, _ := tx.Bucket(bktIdxAgent).Cursor().First()
		tx.Bucket(bktIdxAgent).Delete(k)
		tx.DeleteBucket(bktIdxExpiry)
		_, err := tx.CreateBucket(bktIdxExpiry)
		return err
	})
	s.Close()

	var calls int
	if err := Reindex(path, func(done, total uint64) {
		calls++
		if total != 500 {
			t.Errorf("progress total = %d, want 500", total)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if calls == 0 {
		t.Error("no progress reported")
	}
	s = openAt(t, path, Options{})
	if got := indexSnapshot(t, s.db); !maps.Equal(got, want) {
		t.Errorf("rebuilt indexes differ from those Apply maintained: %d entries, want %d", len(got), len(want))
	}
}

// TestReindex_Interrupted leaves the rebuild marker as a crash would: a
// read-only opener refuses the file, the next read-write Open finishes it.
func TestReindex_Interrupted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "latch.db")
	s := openAt(t, path, Options{})
	fillForReindex(t, s)
	want := indexSnapshot(t, s.db)
	s.db.Update(func(tx *bolt.Tx) error {
		for _, name := range indexBuckets {
			tx.DeleteBucket(name)
			tx.CreateBucket(name)
		}
		return tx.Bucket(bktMeta).Put(keyReindex, []byte{1})
	})
	s.Close()

	if _, err := Open(path, Options{ReadOnly: true}); err == nil {
		t.Error("read-only Open of a half-built index succeeded")
	}
	s = openAt(t, path, Options{})
	if got := indexSnapshot(t, s.db); !maps.Equal(got, want) {
		t.Errorf("Open did not finish the rebuild: %d entries, want %d", len(got), len(want))
	}
	s.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bktMeta).Get(keyReindex) != nil {
			t.Error("rebuild marker still set")
		}
		return nil
	})
}
