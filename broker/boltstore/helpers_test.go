package boltstore

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/storetest"
)

// The suite's helpers, under the names the tests here have always used.
var (
	t0          = storetest.T0
	newIDs      = storetest.NewIDs
	lease       = storetest.Lease
	ev          = storetest.Ev
	leaseIDs    = storetest.LeaseIDs
	approval    = storetest.Approval
	approvalIDs = storetest.ApprovalIDs
)

func apply(t testing.TB, s *Store, c broker.Change) []broker.Event {
	t.Helper()
	return storetest.Apply(t, s, c)
}

func openTest(t testing.TB, opts Options) *Store {
	t.Helper()
	return openAt(t, filepath.Join(t.TempDir(), "latch.db"), opts)
}

func openAt(t testing.TB, path string, opts Options) *Store {
	t.Helper()
	if opts.Now == nil {
		opts.Now = func() time.Time { return t0 }
	}
	s, err := Open(path, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// copyFile copies a closed database so a test can tamper with the copy.
func copyFile(t testing.TB, src string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "copy.db")
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return dst
}
