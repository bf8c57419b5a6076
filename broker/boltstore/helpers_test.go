package boltstore

import (
	"context"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/latchbroker/latch/broker"
)

// t0 is the tests' "now": fixed, so expiry and queue order are exact.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

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

// ids hands out ULIDs in increasing order, as the Service does.
type ids struct {
	mu  sync.Mutex
	at  time.Time
	src io.Reader
}

func newIDs() *ids {
	return &ids{at: t0, src: ulid.Monotonic(rand.New(rand.NewSource(1)), 0)}
}

func (g *ids) next() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.at = g.at.Add(time.Millisecond)
	return ulid.MustNew(ulid.Timestamp(g.at), g.src).String()
}

func lease(id, agent, task string, st broker.LeaseState, expires time.Time) *broker.Lease {
	return &broker.Lease{
		ID: id, State: st,
		Asked: broker.Asked{Agent: agent, Task: task, TemplateVersion: "sha256:abc", Backend: "tokens",
			Params: map[string]string{"region": "eu"}, Reason: "nightly report"},
		Refs:     broker.Refs{TokenAccessor: "acc-" + id, Policy: "latch-" + id},
		IssuedAt: t0, ExpiresAt: expires, MaxExpiresAt: expires.Add(time.Hour),
	}
}

func ev(typ broker.EventType, lease string) broker.Event {
	return broker.Event{Type: typ, Actor: "spiffe://example.org/agent/a", Lease: lease, Time: t0}
}

func apply(t testing.TB, s *Store, c broker.Change) []broker.Event {
	t.Helper()
	evs, err := s.Apply(context.Background(), c)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return evs
}

// leaseIDs lists the IDs of ls, in order.
func leaseIDs(ls []*broker.Lease) []string {
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = l.ID
	}
	return out
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
