package etcdstore

import (
	"context"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/storetest"
)

// TestSuite runs broker.Store's suite on the real cluster, each test
// under a prefix of its own.
func TestSuite(t *testing.T) {
	storetest.Run(t, storetest.Harness{
		Open: func(t testing.TB, now func() time.Time) broker.Store {
			s, err := New(newClient(t), testPrefix(t), Options{Now: now}) // the suite closes it
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
		Check: checkKeys,
	})
}

// checkKeys checks the raw keys: each lease index holds one entry per
// lease (no stale entry), and a refused change left no key at all.
func checkKeys(t testing.TB, bs broker.Store, leases int) {
	t.Helper()
	s := bs.(*Store)
	v, err := s.view(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if leases < 0 {
		if n, err := v.count(s.k.p); err != nil || n != 0 {
			t.Errorf("a refused change left %d keys under %s (%v)", n, s.k.p, err)
		}
		return
	}
	for _, p := range []string{s.k.leases(), s.k.indexAll(ixAgent), s.k.indexAll(ixTask), s.k.indexAll(ixState)} {
		if n, err := v.count(p); err != nil || n != leases {
			t.Errorf("%s holds %d keys, want %d (%v)", p, n, leases, err)
		}
	}
}
