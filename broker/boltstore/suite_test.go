package boltstore

import (
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/storetest"
)

// harness runs broker.Store's suite on a new file per test.
var harness = storetest.Harness{
	Open: func(t testing.TB, now func() time.Time) broker.Store {
		return openAt(t, filepath.Join(t.TempDir(), "latch.db"), Options{Now: now})
	},
	Check: func(t testing.TB, s broker.Store, leases int) {
		if leases < 0 {
			assertEmpty(t, s.(*Store))
		} else {
			assertIndexSizes(t, s.(*Store), leases)
		}
	},
}

func TestSuite(t *testing.T) { storetest.Run(t, harness) }

// TestSuite_SmallPages lists with pages of one and three leases, so that
// every listing resumes across read transactions.
func TestSuite_SmallPages(t *testing.T) {
	defer func(n int) { listPage = n }(listPage)
	for _, listPage = range []int{1, 3} {
		storetest.RunOnly(t, harness, "Leases/Filters")
	}
}

// assertIndexSizes checks that each lease index holds exactly one entry per
// lease (the expiry index one per active lease): no stale entries.
func assertIndexSizes(t testing.TB, s *Store, leases int) {
	t.Helper()
	s.db.View(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bktLeases, bktIdxAgent, bktIdxTask, bktIdxState} {
			if n := tx.Bucket(b).Stats().KeyN; n != leases {
				t.Errorf("bucket %s has %d keys, want %d", b, n, leases)
			}
		}
		return nil
	})
}

// assertEmpty fails if anything but meta holds a key.
func assertEmpty(t testing.TB, s *Store) {
	t.Helper()
	s.db.View(func(tx *bolt.Tx) error {
		for _, name := range allBuckets {
			if string(name) == string(bktMeta) {
				continue
			}
			if k, _ := tx.Bucket(name).Cursor().First(); k != nil {
				t.Errorf("bucket %s holds %q after a refused change", name, k)
			}
		}
		if tx.Bucket(bktMeta).Get(keyAuditHead) != nil {
			t.Error("audit head moved after a refused change")
		}
		return nil
	})
}
