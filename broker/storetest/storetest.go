package storetest

import (
	"context"
	"errors"
	"io"
	"math/rand"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/latchbroker/latch/broker"
)

// Harness is what the suite needs of one implementation of broker.Store.
type Harness struct {
	// Open returns a new, empty store whose clock is now. The suite closes
	// it (a second Close must be harmless).
	Open func(t testing.TB, now func() time.Time) broker.Store
	// Check, when set, checks what the suite cannot see through the Store's
	// reads, after a step: with leases >= 0 that the store holds exactly
	// that many leases and no stale index entry; with -1 that a refused
	// change left nothing behind at all.
	Check func(t testing.TB, s broker.Store, leases int)
}

// open returns a new store of h standing at T0.
func (h Harness) open(t testing.TB) broker.Store {
	t.Helper()
	s := h.Open(t, func() time.Time { return T0 })
	t.Cleanup(func() { s.Close() })
	return s
}

func (h Harness) check(t testing.TB, s broker.Store, leases int) {
	t.Helper()
	if h.Check != nil {
		h.Check(t, s, leases)
	}
}

var tests = []struct {
	name string
	fn   func(*testing.T, Harness)
}{
	{"Apply/RoundTrip", applyRoundTrip},
	{"Apply/IndexMaintenance", applyIndexMaintenance},
	{"Apply/InvalidLeavesNothing", applyInvalidLeavesNothing},
	{"Apply/InvalidApproval", applyInvalidApproval},
	{"Apply/ApprovalWithLease", applyApprovalWithLease},
	{"Apply/Concurrent", applyConcurrent},
	{"Apply/ContextDone", applyContextDone},
	{"Leases/ByRequest", leaseByRequest},
	{"Leases/RequestClaim", requestClaim},
	{"Leases/Filters", leasesFilters},
	{"Leases/ExpiringBefore", expiringBefore},
	{"Leases/CountByTask", countByTask},
	{"Approvals/GetAndNotFound", approvalGetAndNotFound},
	{"Approvals/Filters", approvalsFilters},
	{"Approvals/LifecycleIndexes", approvalsLifecycleIndexes},
	{"Approvals/ByRequestNewestWins", approvalByRequestNewestWins},
	{"Approvals/Expiring", expiringApprovals},
	{"Approvals/Condition", approvalCondition},
	{"Marks/Groups", groupMarks},
	{"Marks/Policies", policyMarks},
	{"Marks/PolicyRace", policyMarkRace},
	{"Queue", revocationQueue},
	{"AgentsAndFreeze", agentsAndFreeze},
	{"Events", events},
	{"Closed", closed},
}

// Run runs the whole suite against h, each test as a subtest.
func Run(t *testing.T, h Harness) { RunOnly(t, h) }

// RunOnly runs the tests whose names start with one of prefixes (all of
// them when there is none): for an implementation that reruns some with
// its own settings, such as smaller pages.
func RunOnly(t *testing.T, h Harness, prefixes ...string) {
	for _, tt := range tests {
		if len(prefixes) > 0 && !hasAnyPrefix(tt.name, prefixes) {
			continue
		}
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, h) })
	}
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// T0 is the suite's "now": fixed, so expiry and queue order are exact.
var T0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// farFuture is after every deadline the tests set.
var farFuture = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)

// IDs hands out ULIDs in increasing order, as the Service does.
type IDs struct {
	mu  sync.Mutex
	at  time.Time
	src io.Reader
}

// NewIDs returns a generator whose IDs start just after T0.
func NewIDs() *IDs {
	return &IDs{at: T0, src: ulid.Monotonic(rand.New(rand.NewSource(1)), 0)}
}

// Next returns the next ID, a millisecond after the last.
func (g *IDs) Next() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.at = g.at.Add(time.Millisecond)
	return ulid.MustNew(ulid.Timestamp(g.at), g.src).String()
}

// Lease returns a lease of agent for task in state st, with refs and
// params a vault-token lease would have.
func Lease(id, agent, task string, st broker.LeaseState, expires time.Time) *broker.Lease {
	return &broker.Lease{
		ID: id, State: st,
		Asked: broker.Asked{Agent: agent, Task: task, TemplateVersion: "sha256:abc", Backend: "tokens",
			Params: map[string]string{"region": "eu"}, Reason: "nightly report"},
		Refs:     broker.Refs{TokenAccessor: "acc-" + id, Policy: "latch-" + id},
		IssuedAt: T0, ExpiresAt: expires, MaxExpiresAt: expires.Add(time.Hour),
	}
}

// Ev returns an event of typ about lease, at T0.
func Ev(typ broker.EventType, lease string) broker.Event {
	return broker.Event{Type: typ, Actor: "spiffe://example.org/agent/a", Lease: lease, Time: T0}
}

// Apply applies c to s and fails the test on an error.
func Apply(t testing.TB, s broker.Store, c broker.Change) []broker.Event {
	t.Helper()
	evs, err := s.Apply(context.Background(), c)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return evs
}

// LeaseIDs lists the IDs of ls, in order.
func LeaseIDs(ls []*broker.Lease) []string {
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = l.ID
	}
	return out
}

// assertNothingWritten fails if s holds anything a refused change could
// have written, as far as its reads show, then asks h.Check.
func assertNothingWritten(t *testing.T, h Harness, s broker.Store) {
	t.Helper()
	ctx := context.Background()
	ins, err1 := s.Intents(ctx)
	ls, err2 := s.Leases(ctx, broker.LeaseFilter{})
	queued, err3 := s.QueueDepth(ctx)
	agents, err4 := s.Agents(ctx)
	freeze, err5 := s.Freeze(ctx)
	last, err6 := s.LastEvent(ctx)
	as, err7 := s.Approvals(ctx, broker.ApprovalFilter{})
	for _, err := range []error{err1, err2, err3, err4, err5, err6, err7} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(ins)+len(ls)+queued+len(agents)+len(as) > 0 || freeze.Active || last != nil {
		t.Errorf("a refused change left %d intents, %d leases, %d revocations, %d agents, %d approvals, freeze %v, last event %v",
			len(ins), len(ls), queued, len(agents), len(as), freeze.Active, last)
	}
	h.check(t, s, -1)
}

// applyContextDone: a change whose context is done before Apply is not
// written.
func applyContextDone(t *testing.T, h Harness) {
	s := h.open(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Apply(ctx, broker.Change{Events: []broker.Event{Ev(broker.EventFreeze, "")}}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Apply with a done context: %v, want context.Canceled", err)
	}
	assertNothingWritten(t, h, s)
}
