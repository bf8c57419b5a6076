package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
)

func Approval(id, agent, reqID string, st broker.ApprovalStatus, expires time.Time) *broker.Approval {
	a := &broker.Approval{
		ID: id, Owner: "spiffe://example.org/ops/bob", Asked: broker.Asked{Agent: agent, Task: "rotate", RequestID: reqID,
			TemplateVersion: "sha256:abc", Backend: "tokens", Params: map[string]string{"key": "alpha"}},
		Rendered: broker.Rendered{Policy: `path "secret/data/keys/alpha" { capabilities = ["update"] }`},
		TTL:      10 * time.Minute, Tier: "high", Required: 1, Status: st, CreatedAt: T0, ExpiresAt: expires,
	}
	switch st {
	case broker.ApprovalApproved:
		a.PickupBy = expires.Add(15 * time.Minute)
	case broker.ApprovalConsumed:
		a.LeaseID = "lease-" + id
	}
	return a
}

func ApprovalIDs(as []*broker.Approval) []string {
	out := make([]string, len(as))
	for i, a := range as {
		out[i] = a.ID
	}
	return out
}

func approvalGetAndNotFound(t *testing.T, h Harness) {
	s := h.open(t)
	ctx := context.Background()
	a := Approval(NewIDs().Next(), "agent-1", "req-1", broker.ApprovalPending, T0.Add(time.Hour))
	Apply(t, s, broker.Change{PutApprovals: []*broker.Approval{a}})

	got, err := s.Approval(ctx, a.ID)
	if err != nil || got.Rendered.Policy != a.Rendered.Policy || got.Status != broker.ApprovalPending || !got.ExpiresAt.Equal(a.ExpiresAt) {
		t.Fatalf("Approval = %+v, %v", got, err)
	}
	_, err = s.Approval(ctx, "nope")
	if !errors.Is(err, broker.ErrApprovalNotFound) || errors.Is(err, broker.ErrStoreUnavailable) {
		t.Fatalf("missing approval: %v; want not found, and not an unavailable store", err)
	}
	if got, err := s.ApprovalByRequest(ctx, "agent-1", "req-1"); err != nil || got.ID != a.ID {
		t.Fatalf("ApprovalByRequest = %+v, %v", got, err)
	}
	for _, k := range [][2]string{{"agent-1", "req-2"}, {"agent-2", "req-1"}} {
		if _, err := s.ApprovalByRequest(ctx, k[0], k[1]); !errors.Is(err, broker.ErrApprovalNotFound) || errors.Is(err, broker.ErrStoreUnavailable) {
			t.Fatalf("ApprovalByRequest(%s, %s): %v, want not found", k[0], k[1], err)
		}
	}
}

// approvalsFilters compares every index path with a brute-force filter.
func approvalsFilters(t *testing.T, h Harness) {
	s := h.open(t)
	ctx := context.Background()
	g := NewIDs()
	statuses := []broker.ApprovalStatus{broker.ApprovalPending, broker.ApprovalApproved, broker.ApprovalDenied,
		broker.ApprovalExpired, broker.ApprovalConsumed}
	var all []*broker.Approval // oldest first
	var c broker.Change
	for i := range 60 {
		a := Approval(g.Next(), fmt.Sprintf("agent-%d", i%4), "", statuses[i%len(statuses)], T0.Add(time.Duration(i)*time.Minute))
		all = append(all, a)
		c.PutApprovals = append(c.PutApprovals, a)
	}
	// Agent IDs that prefix each other must not leak into each other.
	a := Approval(g.Next(), "agent-1x", "", broker.ApprovalPending, T0.Add(time.Hour))
	all = append(all, a)
	c.PutApprovals = append(c.PutApprovals, a)
	Apply(t, s, c)

	for _, f := range []broker.ApprovalFilter{
		{}, {Limit: 5}, {Agent: "agent-1"}, {Agent: "agent-1", Status: broker.ApprovalDenied},
		{Status: broker.ApprovalPending}, {Status: broker.ApprovalPending, Limit: 2}, {Agent: "nobody"},
		{Status: broker.ApprovalConsumed, Agent: "agent-1x"},
	} {
		t.Run(fmt.Sprintf("%+v", f), func(t *testing.T) {
			var want []string
			for i := len(all) - 1; i >= 0; i-- {
				if f.Match(all[i]) && (f.Limit == 0 || len(want) < f.Limit) {
					want = append(want, all[i].ID)
				}
			}
			got, err := s.Approvals(ctx, f)
			if err != nil {
				t.Fatal(err)
			}
			if ids := ApprovalIDs(got); !slices.Equal(ids, want) && len(ids)+len(want) > 0 {
				t.Errorf("Approvals = %v\nwant        %v", ids, want)
			}
		})
	}
	for _, st := range statuses {
		want := 0
		for _, a := range all {
			if a.Status == st {
				want++
			}
		}
		if got, err := s.CountApprovals(ctx, st); err != nil || got != want {
			t.Errorf("CountApprovals(%s) = %d, %v; want %d", st, got, err, want)
		}
	}
}

// An approval's life moves it between the indexes: each version is found
// where it belongs and nowhere else.
func approvalsLifecycleIndexes(t *testing.T, h Harness) {
	s := h.open(t)
	ctx := context.Background()
	id := NewIDs().Next()
	a := Approval(id, "agent-1", "req-1", broker.ApprovalPending, T0.Add(time.Hour))
	Apply(t, s, broker.Change{PutApprovals: []*broker.Approval{a}})

	check := func(step string, status broker.ApprovalStatus, expiringAt time.Time) {
		t.Helper()
		for _, st := range []broker.ApprovalStatus{broker.ApprovalPending, broker.ApprovalApproved, broker.ApprovalConsumed, broker.ApprovalExpired} {
			got, err := s.Approvals(ctx, broker.ApprovalFilter{Status: st})
			if err != nil {
				t.Fatal(err)
			}
			if want := st == status; (len(got) == 1) != want || len(got) > 1 {
				t.Fatalf("%s: %d approvals listed as %s", step, len(got), st)
			}
		}
		if got, _ := s.Approvals(ctx, broker.ApprovalFilter{Agent: "agent-1", Status: status}); len(got) != 1 {
			t.Fatalf("%s: agent index does not list it as %s", step, status)
		}
		due, err := s.ExpiringApprovals(ctx, farFuture, 0)
		if err != nil {
			t.Fatal(err)
		}
		if expiringAt.IsZero() {
			if len(due) != 0 {
				t.Fatalf("%s: a closed approval is in the deadline index", step)
			}
			return
		}
		if len(due) != 1 {
			t.Fatalf("%s: %d approvals with deadlines, want 1", step, len(due))
		}
		if before, _ := s.ExpiringApprovals(ctx, expiringAt, 0); len(before) != 0 {
			t.Fatalf("%s: due before its deadline %s", step, expiringAt)
		}
		if after, _ := s.ExpiringApprovals(ctx, expiringAt.Add(time.Nanosecond), 0); len(after) != 1 {
			t.Fatalf("%s: not due just after its deadline %s", step, expiringAt)
		}
	}
	check("pending", broker.ApprovalPending, a.ExpiresAt)

	a.Status, a.PickupBy = broker.ApprovalApproved, T0.Add(90*time.Minute)
	Apply(t, s, broker.Change{PutApprovals: []*broker.Approval{a}})
	check("approved", broker.ApprovalApproved, a.PickupBy)

	a.Status, a.LeaseID = broker.ApprovalConsumed, "lease-1"
	Apply(t, s, broker.Change{PutApprovals: []*broker.Approval{a}})
	check("consumed", broker.ApprovalConsumed, time.Time{})
	if got, err := s.ApprovalByRequest(ctx, "agent-1", "req-1"); err != nil || got.Status != broker.ApprovalConsumed {
		t.Fatalf("ApprovalByRequest after updates = %+v, %v", got, err)
	}
}

func approvalByRequestNewestWins(t *testing.T, h Harness) {
	s := h.open(t)
	ctx := context.Background()
	g := NewIDs()
	old := Approval(g.Next(), "agent-1", "req-1", broker.ApprovalDenied, T0.Add(time.Hour))
	Apply(t, s, broker.Change{PutApprovals: []*broker.Approval{old}})
	newer := Approval(g.Next(), "agent-1", "req-1", broker.ApprovalPending, T0.Add(time.Hour))
	Apply(t, s, broker.Change{PutApprovals: []*broker.Approval{newer}})
	// An update of the older one must not take the key back.
	old.Reason = "edited"
	Apply(t, s, broker.Change{PutApprovals: []*broker.Approval{old}})
	if got, err := s.ApprovalByRequest(ctx, "agent-1", "req-1"); err != nil || got.ID != newer.ID {
		t.Fatalf("ApprovalByRequest = %v, %v; want the newer %s", got, err, newer.ID)
	}
}

func expiringApprovals(t *testing.T, h Harness) {
	s := h.open(t)
	ctx := context.Background()
	g := NewIDs()
	p1 := Approval(g.Next(), "a", "", broker.ApprovalPending, T0.Add(3*time.Minute))
	p2 := Approval(g.Next(), "a", "", broker.ApprovalPending, T0.Add(1*time.Minute))
	ap := Approval(g.Next(), "a", "", broker.ApprovalApproved, T0.Add(-time.Hour)) // PickupBy T0-45m
	dn := Approval(g.Next(), "a", "", broker.ApprovalDenied, T0.Add(-time.Hour))
	ex := Approval(g.Next(), "a", "", broker.ApprovalExpired, T0.Add(-time.Hour))
	Apply(t, s, broker.Change{PutApprovals: []*broker.Approval{p1, p2, ap, dn, ex}})

	got, err := s.ExpiringApprovals(ctx, T0.Add(5*time.Minute), 0)
	if err != nil {
		t.Fatal(err)
	}
	if ids, want := ApprovalIDs(got), []string{ap.ID, p2.ID, p1.ID}; !slices.Equal(ids, want) {
		t.Fatalf("ExpiringApprovals = %v, want %v (soonest first, open only)", ids, want)
	}
	if got, _ := s.ExpiringApprovals(ctx, T0.Add(5*time.Minute), 2); len(got) != 2 {
		t.Fatalf("limit 2 gave %d", len(got))
	}
	if got, _ := s.ExpiringApprovals(ctx, T0.Add(2*time.Minute), 0); !slices.Equal(ApprovalIDs(got), []string{ap.ID, p2.ID}) {
		t.Fatalf("ExpiringApprovals(T0+2m) = %v", ApprovalIDs(got))
	}
}

func applyInvalidApproval(t *testing.T, h Harness) {
	g := NewIDs()
	ok := func() *broker.Approval {
		return Approval(g.Next(), "a", "r", broker.ApprovalPending, T0.Add(time.Hour))
	}
	tests := []struct {
		name string
		mod  func(*broker.Approval) *broker.Approval
	}{
		{"Nil", func(*broker.Approval) *broker.Approval { return nil }},
		{"NoID", func(a *broker.Approval) *broker.Approval { a.ID = ""; return a }},
		{"NoAgent", func(a *broker.Approval) *broker.Approval { a.Agent = ""; return a }},
		{"NoTask", func(a *broker.Approval) *broker.Approval { a.Task = ""; return a }},
		{"NULInAgent", func(a *broker.Approval) *broker.Approval { a.Agent = "a\x00b"; return a }},
		{"NULInRequestID", func(a *broker.Approval) *broker.Approval { a.RequestID = "r\x00"; return a }},
		{"UnknownStatus", func(a *broker.Approval) *broker.Approval { a.Status = "maybe"; return a }},
		{"PendingWithoutExpiry", func(a *broker.Approval) *broker.Approval { a.ExpiresAt = time.Time{}; return a }},
		{"ApprovedWithoutPickupBy", func(a *broker.Approval) *broker.Approval { a.Status = broker.ApprovalApproved; return a }},
		{"ConsumedWithoutLease", func(a *broker.Approval) *broker.Approval { a.Status = broker.ApprovalConsumed; return a }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := h.open(t)
			good := ok()
			// One bad approval refuses the whole change: the good one and
			// the event are not written either.
			_, err := s.Apply(context.Background(), broker.Change{
				PutApprovals: []*broker.Approval{good, tt.mod(ok())},
				Events:       []broker.Event{Ev(broker.EventApprovalRequested, "")},
			})
			if !errors.Is(err, broker.ErrInvalidChange) {
				t.Fatalf("Apply: %v, want broker.ErrInvalidChange", err)
			}
			if _, err := s.Approval(context.Background(), good.ID); !errors.Is(err, broker.ErrApprovalNotFound) {
				t.Fatalf("part of a refused change was written: %v", err)
			}
			if last, _ := s.LastEvent(context.Background()); last != nil {
				t.Fatalf("an event of a refused change was written: %+v", last)
			}
		})
	}
}

// A lease, the approval it consumes and the audit event commit together.
func applyApprovalWithLease(t *testing.T, h Harness) {
	s := h.open(t)
	ctx := context.Background()
	g := NewIDs()
	a := Approval(g.Next(), "agent-1", "", broker.ApprovalApproved, T0.Add(time.Hour))
	Apply(t, s, broker.Change{PutApprovals: []*broker.Approval{a}})
	l := Lease(g.Next(), "agent-1", "rotate", broker.StateActive, T0.Add(time.Hour))
	l.ApprovalID = a.ID
	used := *a
	used.Status, used.LeaseID = broker.ApprovalConsumed, l.ID
	evs := Apply(t, s, broker.Change{PutLeases: []*broker.Lease{l}, PutApprovals: []*broker.Approval{&used}, Events: []broker.Event{Ev(broker.EventIssue, l.ID)}})
	if len(evs) != 1 || evs[0].Seq != 1 {
		t.Fatalf("events = %+v", evs)
	}
	got, err := s.Approval(ctx, a.ID)
	if err != nil || got.Status != broker.ApprovalConsumed || got.LeaseID != l.ID {
		t.Fatalf("approval = %+v, %v", got, err)
	}
	if due, _ := s.ExpiringApprovals(ctx, farFuture, 0); len(due) != 0 {
		t.Fatal("a consumed approval is still due to expire")
	}
}

// An approval condition holds while the approval is as its writer read
// it: a second review written on the same read (another replica's) fails
// with approval_changed and writes nothing, and so does one on an
// approval that is not stored.
func approvalCondition(t *testing.T, h Harness) {
	s := h.open(t)
	ctx := context.Background()
	g := NewIDs()
	a := Approval(g.Next(), "agent-1", "", broker.ApprovalPending, T0.Add(time.Hour))
	a.Required = 2
	Apply(t, s, broker.Change{PutApprovals: []*broker.Approval{a}})
	read := a.Version()
	review := func(who string) error {
		next := *a
		next.Reviews = []broker.Review{{Approver: who, Decision: broker.ReviewApprove, Reason: "ok", At: T0}}
		_, err := s.Apply(ctx, broker.Change{PutApprovals: []*broker.Approval{&next}, Events: []broker.Event{Ev(broker.EventApprovalReview, "")},
			Conditions: &broker.Conditions{Approval: read}})
		return err
	}
	if err := review("spiffe://example.org/ops/alice"); err != nil {
		t.Fatalf("the first review: %v", err)
	}
	var failed *broker.ConditionFailed
	if err := review("spiffe://example.org/ops/carol"); !errors.As(err, &failed) || failed.Reason != broker.ReasonApprovalChanged {
		t.Fatalf("a review written on a stale read: %v, want approval_changed", err)
	}
	got, err := s.Approval(ctx, a.ID)
	if err != nil || len(got.Reviews) != 1 || got.Reviews[0].Approver != "spiffe://example.org/ops/alice" {
		t.Fatalf("approval = %+v, %v; want alice's review alone", got, err)
	}
	if last, err := s.LastEvent(ctx); err != nil || last.Seq != 1 {
		t.Fatalf("last event = %+v, %v; want the first review's alone", last, err)
	}
	gone := &broker.ApprovalVersion{ID: g.Next(), Status: broker.ApprovalPending}
	if _, err := s.Apply(ctx, broker.Change{Events: []broker.Event{Ev(broker.EventApprovalExpired, "")}, Conditions: &broker.Conditions{Approval: gone}}); !errors.As(err, &failed) || failed.Reason != broker.ReasonApprovalChanged {
		t.Fatalf("a condition on an approval not stored: %v, want approval_changed", err)
	}
}
