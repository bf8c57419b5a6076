package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
)

func applyRoundTrip(t *testing.T, h Harness) {
	s := h.open(t)
	ctx := context.Background()
	g := NewIDs()
	id := g.Next()

	intent := Lease(id, "spiffe://example.org/agent/a", "report", broker.StatePending, T0.Add(10*time.Minute))
	intent.RequestID = "req-1"
	evs := Apply(t, s, broker.Change{PutIntents: []*broker.Lease{intent}, Events: []broker.Event{Ev(broker.EventRequest, id)}})
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
	evs = Apply(t, s, broker.Change{
		DeleteIntents: []string{id},
		PutLeases:     []*broker.Lease{&l},
		Uses:          []broker.Use{{Agent: l.Agent, Template: l.Task, At: T0}},
		Events:        []broker.Event{Ev(broker.EventIssue, id)},
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
	if rec, err := s.Agent(ctx, l.Agent); err != nil || rec.State != broker.AgentActive || !rec.LastUsed.Equal(T0) {
		t.Errorf("Agent = %+v, %v", rec, err)
	}
	if _, err := s.Lease(ctx, "nope"); !errors.Is(err, broker.ErrLeaseNotFound) {
		t.Errorf("Lease(nope): err = %v, want ErrLeaseNotFound", err)
	}

	// Events without a time get Options.Now; the returned events are the
	// stored ones.
	evs = Apply(t, s, broker.Change{Events: []broker.Event{{Type: broker.EventFreeze}, {Type: broker.EventUnfreeze}}})
	if !evs[0].Time.Equal(T0) || evs[1].PrevHash != evs[0].Hash || evs[0].PrevHash == "" {
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

// applyIndexMaintenance moves a lease through its states and checks
// that every index follows: no stale entry answers a query.
func applyIndexMaintenance(t *testing.T, h Harness) {
	s := h.open(t)
	ctx := context.Background()
	id := NewIDs().Next()
	l := Lease(id, "agent-a", "report", broker.StateActive, T0.Add(time.Minute))
	l.RequestID = "r1"
	Apply(t, s, broker.Change{PutLeases: []*broker.Lease{l}})

	expect := func(step string, f broker.LeaseFilter, want ...string) {
		t.Helper()
		got, err := s.Leases(ctx, f)
		if err != nil {
			t.Fatalf("%s: Leases(%+v): %v", step, f, err)
		}
		if ids := LeaseIDs(got); !slices.Equal(ids, want) && (len(ids) != 0 || len(want) != 0) {
			t.Errorf("%s: Leases(%+v) = %v, want %v", step, f, ids, want)
		}
	}
	expiring := func(step string, want int) {
		t.Helper()
		got, err := s.ExpiringBefore(ctx, T0.Add(time.Hour), 0)
		if err != nil || len(got) != want {
			t.Errorf("%s: ExpiringBefore = %v, %v; want %d", step, LeaseIDs(got), err, want)
		}
	}

	expect("active", broker.LeaseFilter{State: broker.StateActive}, id)
	expect("active", broker.LeaseFilter{Agent: "agent-a", LiveOnly: true}, id)
	expiring("active", 1)

	l.State = broker.StateRevoking
	Apply(t, s, broker.Change{PutLeases: []*broker.Lease{l}})
	expect("revoking", broker.LeaseFilter{State: broker.StateActive})
	expect("revoking", broker.LeaseFilter{State: broker.StateRevoking}, id)
	expect("revoking", broker.LeaseFilter{Agent: "agent-a", State: broker.StateActive})
	expect("revoking", broker.LeaseFilter{Task: "report", LiveOnly: true}, id)
	expiring("revoking", 0)

	l.State, l.EndedAt = broker.StateRevoked, T0
	Apply(t, s, broker.Change{PutLeases: []*broker.Lease{l}})
	expect("revoked", broker.LeaseFilter{State: broker.StateRevoking})
	expect("revoked", broker.LeaseFilter{LiveOnly: true})
	expect("revoked", broker.LeaseFilter{Agent: "agent-a", LiveOnly: true})
	expect("revoked", broker.LeaseFilter{Task: "report", LiveOnly: true})
	expect("revoked", broker.LeaseFilter{Agent: "agent-a"}, id)
	expect("revoked", broker.LeaseFilter{State: broker.StateRevoked}, id)

	// Fields that are index keys change too: the old keys go.
	l.Task, l.RequestID, l.State, l.ExpiresAt = "other", "r2", broker.StateActive, T0.Add(2*time.Minute)
	Apply(t, s, broker.Change{PutLeases: []*broker.Lease{l}})
	expect("retasked", broker.LeaseFilter{Task: "report"})
	expect("retasked", broker.LeaseFilter{Task: "other"}, id)
	if _, err := s.LeaseByRequest(ctx, "agent-a", "r1"); !errors.Is(err, broker.ErrLeaseNotFound) {
		t.Errorf("old request ID still maps: err = %v", err)
	}
	exp, _ := s.ExpiringBefore(ctx, T0.Add(time.Hour), 0)
	if len(exp) != 1 || !exp[0].ExpiresAt.Equal(T0.Add(2*time.Minute)) {
		t.Errorf("expiry index after a new expiry = %+v", exp)
	}
	h.check(t, s, 1)
}

func leaseByRequest(t *testing.T, h Harness) {
	s := h.open(t)
	ctx := context.Background()
	g := NewIDs()
	first := Lease(g.Next(), "a", "t", broker.StateFailed, T0)
	first.RequestID = "r"
	Apply(t, s, broker.Change{PutLeases: []*broker.Lease{first}})

	// Same request ID from another agent is another request.
	if _, err := s.LeaseByRequest(ctx, "b", "r"); !errors.Is(err, broker.ErrLeaseNotFound) {
		t.Errorf("other agent: err = %v", err)
	}
	// A retry that minted takes the request over.
	second := Lease(g.Next(), "a", "t", broker.StateActive, T0.Add(time.Hour))
	second.RequestID = "r"
	Apply(t, s, broker.Change{PutLeases: []*broker.Lease{second}})
	if got, err := s.LeaseByRequest(ctx, "a", "r"); err != nil || got.ID != second.ID {
		t.Fatalf("after retry: %v, %v; want %s", got, err, second.ID)
	}
	// Updating the first lease must not steal it back or drop it.
	first.LastError = "still failed"
	Apply(t, s, broker.Change{PutLeases: []*broker.Lease{first}})
	if got, err := s.LeaseByRequest(ctx, "a", "r"); err != nil || got.ID != second.ID {
		t.Errorf("after updating the older lease: %v, %v; want %s", got, err, second.ID)
	}
}

// applyInvalidLeavesNothing sends changes that carry valid parts and
// one invalid one: Apply refuses the whole change and writes nothing.
func applyInvalidLeavesNothing(t *testing.T, h Harness) {
	good := func() broker.Change {
		return broker.Change{
			PutIntents:  []*broker.Lease{Lease("I1", "a", "t", broker.StatePending, T0.Add(time.Hour))},
			PutLeases:   []*broker.Lease{Lease("L1", "a", "t", broker.StateActive, T0.Add(time.Hour))},
			Enqueue:     []broker.Revocation{{LeaseID: "L0", NextAttempt: T0}},
			AgentStates: []broker.AgentRecord{{ID: "a", State: broker.AgentPaused}},
			Freeze:      &broker.FreezeState{Active: true},
			Events:      []broker.Event{Ev(broker.EventIssue, "L1")},
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
			s := h.open(t)
			ctx := context.Background()
			c := good()
			tt.change(&c)
			evs, err := s.Apply(ctx, c)
			if !errors.Is(err, broker.ErrInvalidChange) || errors.Is(err, broker.ErrStoreUnavailable) {
				t.Fatalf("Apply: err = %v, want broker.ErrInvalidChange only", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not say %q", err, tt.want)
			}
			if evs != nil {
				t.Errorf("Apply returned events %+v with an error", evs)
			}
			assertNothingWritten(t, h, s)
		})
	}
}

// applyConcurrent runs 100 writers at once: every event lands once,
// the chain has no gap and verifies, and each caller got back the events
// that were stored.
func applyConcurrent(t *testing.T, h Harness) {
	s := h.open(t)
	ctx := context.Background()
	g := NewIDs()
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
				id := g.Next()
				l := Lease(id, fmt.Sprintf("agent-%d", w), "t", broker.StateActive, T0.Add(time.Hour))
				if _, err := s.Apply(ctx, broker.Change{PutIntents: []*broker.Lease{l}}); err != nil {
					errs <- err
					return
				}
				evs, err := s.Apply(ctx, broker.Change{
					DeleteIntents: []string{id},
					PutLeases:     []*broker.Lease{l},
					Events:        []broker.Event{Ev(broker.EventRequest, id), Ev(broker.EventIssue, id)},
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
	h.check(t, s, writers*each)
}

// leasesFilters compares every index path with a brute-force filter
// over all leases.
func leasesFilters(t *testing.T, h Harness) {
	s := h.open(t)
	ctx := context.Background()
	g := NewIDs()
	states := []broker.LeaseState{
		broker.StatePending, broker.StateActive, broker.StateRevoking, broker.StateRevoked,
		broker.StateExpired, broker.StateFailed, broker.StateIrrevocable,
	}
	var all []*broker.Lease // oldest first
	var c broker.Change
	for i := 0; i < 300; i++ {
		l := Lease(g.Next(), fmt.Sprintf("agent-%d", i%7), fmt.Sprintf("task-%d", i%5), states[i%len(states)], T0.Add(time.Duration(i)*time.Second))
		all = append(all, l)
		c.PutLeases = append(c.PutLeases, l)
	}
	// Agent IDs that prefix each other must not leak into each other.
	l := Lease(g.Next(), "agent-1x", "task-1", broker.StateActive, T0.Add(time.Hour))
	all = append(all, l)
	c.PutLeases = append(c.PutLeases, l)
	Apply(t, s, c)

	filters := []broker.LeaseFilter{
		{},
		{Limit: 10},
		{Agent: "agent-1"},
		{Agent: "agent-1", LiveOnly: true},
		{Agent: "agent-1", State: broker.StateRevoked},
		{Agent: "agent-3", Task: "task-2"},
		{Agent: "agent-3", Task: "task-2", LiveOnly: true, Limit: 2},
		{Agent: "nobody"},
		{Task: "task-1"},
		{Task: "task-1", State: broker.StateActive, Limit: 3},
		{State: broker.StateIrrevocable},
		{State: broker.StateRevoked, LiveOnly: true},
		{State: broker.StateActive, LiveOnly: true},
		{LiveOnly: true},
		{LiveOnly: true, Limit: 7},
	}
	for _, f := range filters {
		t.Run(fmt.Sprintf("%+v", f), func(t *testing.T) {
			var want []string
			for i := len(all) - 1; i >= 0; i-- {
				if f.Match(all[i]) && (f.Limit == 0 || len(want) < f.Limit) {
					want = append(want, all[i].ID)
				}
			}
			got, err := s.Leases(ctx, f)
			if err != nil {
				t.Fatal(err)
			}
			if ids := LeaseIDs(got); !slices.Equal(ids, want) && len(ids)+len(want) > 0 {
				t.Errorf("Leases = %v\nwant     %v", ids, want)
			}
		})
	}
}

func expiringBefore(t *testing.T, h Harness) {
	s := h.open(t)
	ctx := context.Background()
	g := NewIDs()
	mk := func(st broker.LeaseState, in time.Duration) *broker.Lease {
		return Lease(g.Next(), "a", "t", st, T0.Add(in))
	}
	// Inserted out of expiry order; the old one expired before 1970 to
	// check the sign handling of time keys.
	l30, l10, lRevoking, l20, lOld, lLater := mk(broker.StateActive, 30*time.Second), mk(broker.StateActive, 10*time.Second),
		mk(broker.StateRevoking, time.Second), mk(broker.StateActive, 20*time.Second), mk(broker.StateActive, 0), mk(broker.StateActive, time.Hour)
	lOld.ExpiresAt = time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC)
	Apply(t, s, broker.Change{PutLeases: []*broker.Lease{l30, l10, lRevoking, l20, lOld, lLater}})

	tests := []struct {
		before time.Time
		limit  int
		want   []string
	}{
		{T0.Add(time.Minute), 0, []string{lOld.ID, l10.ID, l20.ID, l30.ID}},
		{T0.Add(time.Minute), 2, []string{lOld.ID, l10.ID}},
		{T0.Add(20 * time.Second), 0, []string{lOld.ID, l10.ID}}, // strictly before
		{T0, 0, []string{lOld.ID}},
		{time.Time{}, 0, nil},
	}
	for _, tt := range tests {
		got, err := s.ExpiringBefore(ctx, tt.before, tt.limit)
		if err != nil {
			t.Fatal(err)
		}
		if ids := LeaseIDs(got); !slices.Equal(ids, tt.want) && len(ids)+len(tt.want) > 0 {
			t.Errorf("ExpiringBefore(%s, %d) = %v, want %v", tt.before, tt.limit, ids, tt.want)
		}
	}
}

// countByTask compares the index count with a brute-force count over
// all leases, after state changes, with task names that prefix each other.
func countByTask(t *testing.T, h Harness) {
	s := h.open(t)
	ctx := context.Background()
	g := NewIDs()
	states := []broker.LeaseState{broker.StateActive, broker.StateActive, broker.StateRevoked, broker.StateExpired, broker.StateRevoking}
	var c broker.Change
	for i := range 200 {
		task := []string{"task", "task-1", "task-1x", "t"}[i%4]
		c.PutLeases = append(c.PutLeases, Lease(g.Next(), "agent", task, states[i%len(states)], T0.Add(time.Duration(i)*time.Second)))
	}
	Apply(t, s, c)
	// Half the active leases are revoked: their index values change.
	var revoke broker.Change
	for i, l := range c.PutLeases {
		if l.State == broker.StateActive && i%2 == 0 {
			r := *l
			r.State = broker.StateRevoked
			revoke.PutLeases = append(revoke.PutLeases, &r)
		}
	}
	Apply(t, s, revoke)

	all, err := s.Leases(ctx, broker.LeaseFilter{})
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range append(states, broker.StateFailed) {
		want := map[string]int{}
		for _, l := range all {
			if l.State == st {
				want[l.Task]++
			}
		}
		got, err := s.CountByTask(ctx, st)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("CountByTask(%s) = %v, want %v", st, got, want)
		}
	}
}

// A request claim holds one agent's request for one intent at a time:
// a second intent of it fails with request_in_flight; once a lease of it
// delivered its secret, request_served; once that lease was withheld, a
// new intent may claim it again. Another agent's same request ID is
// another request.
func requestClaim(t *testing.T, h Harness) {
	s := h.open(t)
	ctx := context.Background()
	g := NewIDs()
	intent := func(id, agent string) error {
		l := Lease(id, agent, "rotate", broker.StatePending, T0.Add(time.Hour))
		l.RequestID = "r-1"
		_, err := s.Apply(ctx, broker.Change{PutIntents: []*broker.Lease{l}, Events: []broker.Event{Ev(broker.EventRequest, id)},
			Conditions: &broker.Conditions{Request: &broker.RequestClaim{Agent: agent, RequestID: "r-1", Lease: id}}})
		return err
	}
	wantReason := func(err error, reason string) {
		t.Helper()
		var failed *broker.ConditionFailed
		if !errors.As(err, &failed) || failed.Reason != reason {
			t.Fatalf("intent: %v, want %s", err, reason)
		}
	}
	first := g.Next()
	if err := intent(first, "agent-1"); err != nil {
		t.Fatal(err)
	}
	if err := intent(first, "agent-1"); err != nil {
		t.Fatalf("the same intent again (its refs recorded): %v", err)
	}
	wantReason(intent(g.Next(), "agent-1"), broker.ReasonRequestInFlight)
	if err := intent(g.Next(), "agent-2"); err != nil {
		t.Fatalf("another agent's request of the same ID: %v", err)
	}
	lease := Lease(first, "agent-1", "rotate", broker.StateActive, T0.Add(time.Hour))
	lease.RequestID = "r-1"
	Apply(t, s, broker.Change{DeleteIntents: []string{first}, PutLeases: []*broker.Lease{lease}})
	wantReason(intent(g.Next(), "agent-1"), broker.ReasonRequestServed)
	lease.State, lease.Withheld = broker.StateRevoking, true
	Apply(t, s, broker.Change{PutLeases: []*broker.Lease{lease}})
	if err := intent(g.Next(), "agent-1"); err != nil {
		t.Fatalf("a new try of a request whose lease was withheld: %v", err)
	}
}
