package boltstore

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/latchbroker/latch/broker"
)

func TestApply_RoundTrip(t *testing.T) {
	s := openTest(t, Options{})
	ctx := context.Background()
	g := newIDs()
	id := g.next()

	intent := lease(id, "spiffe://example.org/agent/a", "report", broker.StatePending, t0.Add(10*time.Minute))
	intent.RequestID = "req-1"
	evs := apply(t, s, broker.Change{PutIntents: []*broker.Lease{intent}, Events: []broker.Event{ev(broker.EventRequest, id)}})
	if len(evs) != 1 || evs[0].Seq != 1 || evs[0].PrevHash != "" || evs[0].Hash == "" {
		t.Fatalf("first chained event = %+v", evs)
	}
	got, err := s.Intents(ctx)
	if err != nil || len(got) != 1 || got[0].ID != id || got[0].Refs != intent.Refs {
		t.Fatalf("Intents = %+v, %v", got, err)
	}
	if _, err := s.LeaseByRequest(ctx, intent.Agent, "req-1"); !errors.Is(err, broker.ErrLeaseNotFound) {
		t.Errorf("LeaseByRequest finds an intent: err = %v", err)
	}

	// Commit: intent out, lease in, agent touched, one event.
	l := *intent
	l.State = broker.StateActive
	evs = apply(t, s, broker.Change{
		DeleteIntents: []string{id},
		PutLeases:     []*broker.Lease{&l},
		Uses:          []broker.Use{{Agent: l.Agent, Template: l.Task, At: t0}},
		Events:        []broker.Event{ev(broker.EventIssue, id)},
	})
	if len(evs) != 1 || evs[0].Seq != 2 {
		t.Fatalf("second event = %+v", evs)
	}
	if got, _ := s.Intents(ctx); len(got) != 0 {
		t.Errorf("intent still stored: %+v", got)
	}
	stored, err := s.Lease(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(normalise(stored), normalise(&l)) {
		t.Errorf("Lease = %+v\nwant  %+v", stored, &l)
	}
	if byReq, err := s.LeaseByRequest(ctx, l.Agent, "req-1"); err != nil || byReq.ID != id {
		t.Errorf("LeaseByRequest = %+v, %v", byReq, err)
	}
	if rec, err := s.Agent(ctx, l.Agent); err != nil || rec.State != broker.AgentActive || !rec.LastUsed.Equal(t0) {
		t.Errorf("Agent = %+v, %v", rec, err)
	}
	if _, err := s.Lease(ctx, "nope"); !errors.Is(err, broker.ErrLeaseNotFound) {
		t.Errorf("Lease(nope): err = %v, want ErrLeaseNotFound", err)
	}

	// Events without a time get Options.Now; the returned events are the
	// stored ones.
	evs = apply(t, s, broker.Change{Events: []broker.Event{{Type: broker.EventFreeze}, {Type: broker.EventUnfreeze}}})
	if !evs[0].Time.Equal(t0) || evs[1].PrevHash != evs[0].Hash || evs[0].PrevHash == "" {
		t.Errorf("chained events = %+v", evs)
	}
	last, err := s.LastEvent(ctx)
	if err != nil || !reflect.DeepEqual(*last, evs[1]) {
		t.Errorf("LastEvent = %+v, %v; want %+v", last, err, evs[1])
	}

	// An empty change writes nothing and needs no transaction.
	if evs, err := s.Apply(ctx, broker.Change{}); err != nil || len(evs) != 0 {
		t.Errorf("empty Apply = %v, %v", evs, err)
	}
}

// normalise makes times comparable with DeepEqual after a JSON round trip.
func normalise(l *broker.Lease) *broker.Lease {
	c := *l
	for _, p := range []*time.Time{&c.IssuedAt, &c.ExpiresAt, &c.MaxExpiresAt, &c.EndedAt} {
		*p = p.UTC()
	}
	return &c
}

// TestApply_IndexMaintenance moves a lease through its states and checks
// that every index follows: no stale entry answers a query.
func TestApply_IndexMaintenance(t *testing.T) {
	s := openTest(t, Options{})
	ctx := context.Background()
	id := newIDs().next()
	l := lease(id, "agent-a", "report", broker.StateActive, t0.Add(time.Minute))
	l.RequestID = "r1"
	apply(t, s, broker.Change{PutLeases: []*broker.Lease{l}})

	expect := func(step string, f broker.LeaseFilter, want ...string) {
		t.Helper()
		got, err := s.Leases(ctx, f)
		if err != nil {
			t.Fatalf("%s: Leases(%+v): %v", step, f, err)
		}
		if ids := leaseIDs(got); !slices.Equal(ids, want) && (len(ids) != 0 || len(want) != 0) {
			t.Errorf("%s: Leases(%+v) = %v, want %v", step, f, ids, want)
		}
	}
	expiring := func(step string, want int) {
		t.Helper()
		got, err := s.ExpiringBefore(ctx, t0.Add(time.Hour), 0)
		if err != nil || len(got) != want {
			t.Errorf("%s: ExpiringBefore = %v, %v; want %d", step, leaseIDs(got), err, want)
		}
	}

	expect("active", broker.LeaseFilter{State: broker.StateActive}, id)
	expect("active", broker.LeaseFilter{Agent: "agent-a", LiveOnly: true}, id)
	expiring("active", 1)

	l.State = broker.StateRevoking
	apply(t, s, broker.Change{PutLeases: []*broker.Lease{l}})
	expect("revoking", broker.LeaseFilter{State: broker.StateActive})
	expect("revoking", broker.LeaseFilter{State: broker.StateRevoking}, id)
	expect("revoking", broker.LeaseFilter{Agent: "agent-a", State: broker.StateActive})
	expect("revoking", broker.LeaseFilter{Task: "report", LiveOnly: true}, id)
	expiring("revoking", 0)

	l.State, l.EndedAt = broker.StateRevoked, t0
	apply(t, s, broker.Change{PutLeases: []*broker.Lease{l}})
	expect("revoked", broker.LeaseFilter{State: broker.StateRevoking})
	expect("revoked", broker.LeaseFilter{LiveOnly: true})
	expect("revoked", broker.LeaseFilter{Agent: "agent-a", LiveOnly: true})
	expect("revoked", broker.LeaseFilter{Task: "report", LiveOnly: true})
	expect("revoked", broker.LeaseFilter{Agent: "agent-a"}, id)
	expect("revoked", broker.LeaseFilter{State: broker.StateRevoked}, id)

	// Fields that are index keys change too: the old keys go.
	l.Task, l.RequestID, l.State, l.ExpiresAt = "other", "r2", broker.StateActive, t0.Add(2*time.Minute)
	apply(t, s, broker.Change{PutLeases: []*broker.Lease{l}})
	expect("retasked", broker.LeaseFilter{Task: "report"})
	expect("retasked", broker.LeaseFilter{Task: "other"}, id)
	if _, err := s.LeaseByRequest(ctx, "agent-a", "r1"); !errors.Is(err, broker.ErrLeaseNotFound) {
		t.Errorf("old request ID still maps: err = %v", err)
	}
	exp, _ := s.ExpiringBefore(ctx, t0.Add(time.Hour), 0)
	if len(exp) != 1 || !exp[0].ExpiresAt.Equal(t0.Add(2*time.Minute)) {
		t.Errorf("expiry index after a new expiry = %+v", exp)
	}
	assertIndexSizes(t, s, 1)
}

// assertIndexSizes checks that each lease index holds exactly one entry per
// lease (the expiry index one per active lease): no stale entries.
func assertIndexSizes(t *testing.T, s *Store, leases int) {
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

func TestLeaseByRequest(t *testing.T) {
	s := openTest(t, Options{})
	ctx := context.Background()
	g := newIDs()
	first := lease(g.next(), "a", "t", broker.StateFailed, t0)
	first.RequestID = "r"
	apply(t, s, broker.Change{PutLeases: []*broker.Lease{first}})

	// Same request ID from another agent is another request.
	if _, err := s.LeaseByRequest(ctx, "b", "r"); !errors.Is(err, broker.ErrLeaseNotFound) {
		t.Errorf("other agent: err = %v", err)
	}
	// A retry that minted takes the request over.
	second := lease(g.next(), "a", "t", broker.StateActive, t0.Add(time.Hour))
	second.RequestID = "r"
	apply(t, s, broker.Change{PutLeases: []*broker.Lease{second}})
	if got, err := s.LeaseByRequest(ctx, "a", "r"); err != nil || got.ID != second.ID {
		t.Fatalf("after retry: %v, %v; want %s", got, err, second.ID)
	}
	// Updating the first lease must not steal it back or drop it.
	first.LastError = "still failed"
	apply(t, s, broker.Change{PutLeases: []*broker.Lease{first}})
	if got, err := s.LeaseByRequest(ctx, "a", "r"); err != nil || got.ID != second.ID {
		t.Errorf("after updating the older lease: %v, %v; want %s", got, err, second.ID)
	}
}

// TestApply_InvalidLeavesNothing sends changes that carry valid parts and
// one invalid one: Apply refuses the whole change and writes nothing.
func TestApply_InvalidLeavesNothing(t *testing.T) {
	good := func() broker.Change {
		return broker.Change{
			PutIntents:  []*broker.Lease{lease("I1", "a", "t", broker.StatePending, t0.Add(time.Hour))},
			PutLeases:   []*broker.Lease{lease("L1", "a", "t", broker.StateActive, t0.Add(time.Hour))},
			Enqueue:     []broker.Revocation{{LeaseID: "L0", NextAttempt: t0}},
			AgentStates: []broker.AgentRecord{{ID: "a", State: broker.AgentPaused}},
			Freeze:      &broker.FreezeState{Active: true},
			Events:      []broker.Event{ev(broker.EventIssue, "L1")},
		}
	}
	tests := []struct {
		name   string
		change func(c *broker.Change)
		want   string
	}{
		{"LeaseWithoutID", func(c *broker.Change) { c.PutLeases[0].ID = "" }, "lease ID is empty"},
		{"LeaseWithoutAgent", func(c *broker.Change) { c.PutLeases[0].Agent = "" }, "lease L1 agent is empty"},
		{"LeaseWithoutTask", func(c *broker.Change) { c.PutLeases[0].Task = "" }, "lease L1 task is empty"},
		{"LeaseAgentWithNUL", func(c *broker.Change) { c.PutLeases[0].Agent = "a\x00b" }, "contains a NUL byte"},
		{"LeaseIDTooLong", func(c *broker.Change) { c.PutLeases[0].ID = strings.Repeat("x", 5000) }, "more than 4096"},
		{"LeaseUnknownState", func(c *broker.Change) { c.PutLeases[0].State = "zombie" }, `unknown state "zombie"`},
		{"LeaseNoState", func(c *broker.Change) { c.PutLeases[0].State = "" }, `unknown state ""`},
		{"ActiveLeaseWithoutExpiry", func(c *broker.Change) { c.PutLeases[0].ExpiresAt = time.Time{} }, "has no expiry"},
		{"NilLease", func(c *broker.Change) { c.PutLeases = append(c.PutLeases, nil) }, "nil lease"},
		{"IntentWithoutID", func(c *broker.Change) { c.PutIntents[0].ID = "" }, "intent ID is empty"},
		{"RequestIDWithNUL", func(c *broker.Change) { c.PutLeases[0].RequestID = "r\x00" }, "request ID"},
		{"DeleteEmptyIntent", func(c *broker.Change) { c.DeleteIntents = []string{""} }, "intent ID to delete is empty"},
		{"RevocationWithoutLease", func(c *broker.Change) { c.Enqueue[0].LeaseID = "" }, "revocation lease ID is empty"},
		{"DequeueEmpty", func(c *broker.Change) { c.Dequeue = []string{""} }, "revocation to dequeue is empty"},
		{"AgentWithoutID", func(c *broker.Change) { c.AgentStates[0].ID = "" }, "agent ID is empty"},
		{"AgentUnknownState", func(c *broker.Change) { c.AgentStates[0].State = "asleep" }, `unknown state "asleep"`},
		{"EventWithoutType", func(c *broker.Change) { c.Events = append(c.Events, broker.Event{}) }, "event 1 has no type"},
		{"EventTimeUnhashable", func(c *broker.Change) { c.Events[0].Time = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) }, "outside the years 1 to 9999"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openTest(t, Options{})
			ctx := context.Background()
			c := good()
			tt.change(&c)
			evs, err := s.Apply(ctx, c)
			if !errors.Is(err, ErrInvalidChange) || errors.Is(err, broker.ErrStoreUnavailable) {
				t.Fatalf("Apply: err = %v, want ErrInvalidChange only", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not say %q", err, tt.want)
			}
			if evs != nil {
				t.Errorf("Apply returned events %+v with an error", evs)
			}
			assertEmpty(t, s)
		})
	}
}

// assertEmpty fails if anything but meta holds a key.
func assertEmpty(t *testing.T, s *Store) {
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

// TestApply_Concurrent runs 100 writers at once: every event lands once,
// the chain has no gap and verifies, and each caller got back the events
// that were stored.
func TestApply_Concurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "latch.db")
	s := openAt(t, path, Options{})
	ctx := context.Background()
	g := newIDs()
	const writers, each = 100, 5

	var (
		mu       sync.Mutex
		returned = map[uint64]broker.Event{}
		wg       sync.WaitGroup
		errs     = make(chan error, writers)
	)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				id := g.next()
				l := lease(id, fmt.Sprintf("agent-%d", w), "t", broker.StateActive, t0.Add(time.Hour))
				if _, err := s.Apply(ctx, broker.Change{PutIntents: []*broker.Lease{l}}); err != nil {
					errs <- err
					return
				}
				evs, err := s.Apply(ctx, broker.Change{
					DeleteIntents: []string{id},
					PutLeases:     []*broker.Lease{l},
					Events:        []broker.Event{ev(broker.EventRequest, id), ev(broker.EventIssue, id)},
				})
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				for _, e := range evs {
					if _, dup := returned[e.Seq]; dup {
						t.Errorf("seq %d returned twice", e.Seq)
					}
					returned[e.Seq] = e
				}
				mu.Unlock()
				// A writer's two events are adjacent: one change, one run.
				if evs[1].Seq != evs[0].Seq+1 || evs[1].PrevHash != evs[0].Hash {
					t.Errorf("events of one change not adjacent: %+v", evs)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	var v broker.ChainVerifier
	err := s.Events(ctx, 0, func(e broker.Event) (bool, error) {
		if r, ok := returned[e.Seq]; !ok || !reflect.DeepEqual(r, e) {
			t.Errorf("stored event %d differs from the one returned: %+v vs %+v", e.Seq, e, r)
		}
		return true, v.Next(e)
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(writers * each * 2); v.Count() != want {
		t.Errorf("chain has %d events, want %d", v.Count(), want)
	}
	if got, _ := s.Intents(ctx); len(got) != 0 {
		t.Errorf("%d intents left", len(got))
	}
	assertIndexSizes(t, s, writers*each)
	s.Close()
	if res, err := VerifyAudit(path, nil); err != nil || res.Verified != writers*each*2 {
		t.Errorf("VerifyAudit = %+v, %v", res, err)
	}
}

func TestApply_Context(t *testing.T) {
	t.Run("DoneBefore", func(t *testing.T) {
		s := openTest(t, Options{})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := s.Apply(ctx, broker.Change{Events: []broker.Event{ev(broker.EventFreeze, "")}}); !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v, want context.Canceled", err)
		}
		assertEmpty(t, s)
	})
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
