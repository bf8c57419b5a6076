package broker_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/boltstore"
	"github.com/latchbroker/latch/broker/brokertest"
	"github.com/latchbroker/latch/templates"
)

// These tests race an operator's stop against requests in flight, with a
// backend that blocks until released. `make stress` runs them with -race
// -count=50.

var (
	ctx = context.Background()
	eu  = map[string]string{"region": "eu"}
)

type result struct {
	res *broker.Issued
	err error
}

// issueAsync starts an issue and returns where its result will arrive.
func (f *fixture) issueAsync(req broker.IssueRequest) <-chan result {
	out := make(chan result, 1)
	go func() {
		res, err := f.svc.Issue(context.Background(), req)
		out <- result{res, err}
	}()
	return out
}

// wantRefused checks that a request ended with the reason and no secret.
func wantRefused(t *testing.T, r result, code, reason string) {
	t.Helper()
	var e *broker.Error
	if !errors.As(r.err, &e) || e.Code != code || !slices.Contains(e.Reasons, reason) {
		t.Fatalf("request in flight: res = %+v, err = %v; want %s with reason %s", r.res, r.err, code, reason)
	}
	if r.res != nil {
		t.Fatalf("a refused request returned %+v", r.res)
	}
}

// withheldLease is the one lease the blocked mint created, once its
// revocation has run: it must end revoked, and its credential gone.
func (f *fixture) wantWithheld(t *testing.T, id string) {
	t.Helper()
	if _, err := f.svc.Leases().ProcessRevocations(ctx); err != nil {
		t.Fatal(err)
	}
	l, err := f.svc.Leases().Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if l.State != broker.StateRevoked || !l.Withheld {
		t.Fatalf("lease %s is %s (withheld %v), want revoked and withheld", id, l.State, l.Withheld)
	}
	if f.backend.Alive(id) {
		t.Fatalf("credential of lease %s still alive", id)
	}
	evs := f.events(t) // verifies the chain
	var refused, revoked bool
	for _, e := range evs {
		refused = refused || (e.Lease == id && (e.Type == broker.EventViolation || e.Type == broker.EventDeny))
		revoked = revoked || (e.Lease == id && e.Type == broker.EventRevoked)
	}
	if !refused || !revoked {
		t.Fatalf("audit of lease %s: refused %v, revoked %v; want both", id, refused, revoked)
	}
}

// A stop while the backend is minting: the caller gets no secret and the
// credential is revoked.
func TestControls_StopDuringMint(t *testing.T) {
	for _, tt := range []struct {
		name   string
		stop   func(f *fixture) error
		reason templates.ReasonCode
	}{
		{"Quarantine", func(f *fixture) error {
			return f.svc.Agents().SetState(ctx, operator, reportBot, broker.AgentQuarantined, "leak")
		}, templates.ReasonAgentQuarantined},
		{"Pause", func(f *fixture) error {
			return f.svc.Agents().SetState(ctx, operator, reportBot, broker.AgentPaused, "odd")
		}, templates.ReasonAgentPaused},
		{"Freeze", func(f *fixture) error { return f.svc.Agents().SetFreeze(ctx, operator, true, "incident") }, templates.ReasonGlobalFreeze},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			entered, release := f.backend.Block()
			defer release()
			done := f.issueAsync(broker.IssueRequest{Agent: reportBot, Task: "report", Params: eu, Reason: "race"})
			id := <-entered // the credential exists; its lease is an intent
			must(t, tt.stop(f))
			release()
			wantRefused(t, <-done, broker.EFORBIDDEN, string(tt.reason))
			f.wantWithheld(t, id)
		})
	}
}

// A pause that lands between the decision and the commit: the commit
// fails, and the pause is what the store keeps, across a reopen.
func TestControls_PauseDuringCommit(t *testing.T) {
	f := newFixture(t)
	inCommit, proceed := make(chan struct{}), make(chan struct{})
	f.store.hang = func(c broker.Change) bool {
		if len(c.Uses) > 0 { // the issue's commit, on its way to the store
			close(inCommit)
			<-proceed
		}
		return false
	}
	done := f.issueAsync(broker.IssueRequest{Agent: reportBot, Task: "report", Params: eu, Reason: "race"})
	<-inCommit
	if err := f.svc.Agents().SetState(ctx, operator, reportBot, broker.AgentPaused, "odd"); err != nil {
		t.Fatal(err)
	}
	close(proceed)
	wantRefused(t, <-done, broker.EFORBIDDEN, string(templates.ReasonAgentPaused))
	f.events(t)
	if st := f.reopenedAgentState(t, reportBot); st != broker.AgentPaused {
		t.Fatalf("agent is %s after reopening the store, want paused", st)
	}
}

// A pause racing an issue that commits: whichever lands first, the state
// stored is the pause.
func TestControls_PauseRacingIssue(t *testing.T) {
	f := newFixture(t)
	done := f.issueAsync(broker.IssueRequest{Agent: reportBot, Task: "report", Params: eu, Reason: "race"})
	if err := f.svc.Agents().SetState(ctx, operator, reportBot, broker.AgentPaused, "odd"); err != nil {
		t.Fatal(err)
	}
	if r := <-done; r.err != nil {
		wantRefused(t, r, broker.EFORBIDDEN, string(templates.ReasonAgentPaused))
	}
	f.events(t)
	if st := f.reopenedAgentState(t, reportBot); st != broker.AgentPaused {
		t.Fatalf("agent is %s after reopening the store, want paused", st)
	}
}

func (f *fixture) reopenedAgentState(t *testing.T, agent string) broker.AgentState {
	t.Helper()
	if err := f.store.Store.Close(); err != nil {
		t.Fatal(err)
	}
	bs, err := boltstore.Open(f.dbPath, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer bs.Close()
	rec, err := bs.Agent(ctx, agent)
	if err != nil {
		t.Fatal(err)
	}
	return rec.State
}

func TestControls_BudgetUnderConcurrency(t *testing.T) {
	f := newFixture(t)
	const n = 50
	start := make(chan struct{})
	results := make(chan result, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			<-start
			res, err := f.svc.Issue(ctx, broker.IssueRequest{Agent: "spiffe://example.org/agent/hoarder", Task: "budgeted", Params: eu})
			results <- result{res, err}
		})
	}
	close(start)
	wg.Wait()
	close(results)
	issued := 0
	for r := range results {
		if r.err == nil {
			issued++
			continue
		}
		var e *broker.Error
		if !errors.As(r.err, &e) || e.Code != broker.ELIMIT || !slices.Equal(e.Reasons, []string{broker.ReasonTemplateBudget}) {
			t.Fatalf("refusal %v, want limit with reason %s", r.err, broker.ReasonTemplateBudget)
		}
	}
	active, err := f.svc.Leases().List(ctx, broker.LeaseFilter{Agent: "spiffe://example.org/agent/hoarder", State: broker.StateActive})
	if err != nil {
		t.Fatal(err)
	}
	if issued != 1 || len(active) != 1 {
		t.Fatalf("issued %d, %d active leases; want exactly 1 under max_active: 1", issued, len(active))
	}
	f.events(t)
}

func TestControls_RenewReEvaluates(t *testing.T) {
	issue := func(t *testing.T, f *fixture) *broker.Lease { return f.issue(t, reportBot, "report", eu).Lease }
	tests := []struct {
		name   string
		stop   func(t *testing.T, f *fixture)
		reason string
	}{
		{"Paused", func(t *testing.T, f *fixture) {
			must(t, f.svc.Agents().SetState(ctx, operator, reportBot, broker.AgentPaused, "odd"))
		}, string(templates.ReasonAgentPaused)},
		{"Quarantined", func(t *testing.T, f *fixture) {
			must(t, f.svc.Agents().SetState(ctx, operator, reportBot, broker.AgentQuarantined, "leak"))
		}, string(templates.ReasonAgentQuarantined)},
		{"GlobalFreeze", func(t *testing.T, f *fixture) {
			must(t, f.svc.Agents().SetFreeze(ctx, operator, true, "incident"))
		}, string(templates.ReasonGlobalFreeze)},
		{"DenyWindow", func(t *testing.T, f *fixture) {
			// Six minutes later it is the 28th in Berlin: billing-close.
			f.clock.Add(6 * time.Minute)
		}, string(templates.ReasonFrozen) + ":billing-close"},
		{"GrantRemoved", func(t *testing.T, f *fixture) {
			p := brokertest.LoadPolicy(t, strings.Replace(brokertest.Policy, "templates: [report]\n", "templates: [budgeted]\n", 1), brokertest.Templates)
			must(t, f.svc.SetPolicy(ctx, p, "test"))
		}, string(templates.ReasonTaskNotGranted)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.clock.Set(time.Date(2026, 3, 27, 22, 55, 0, 0, time.UTC)) // 23:55 in Berlin
			l := issue(t, f)
			tt.stop(t, f)
			_, err := f.svc.Leases().Renew(ctx, reportBot, l.ID, 0)
			var e *broker.Error
			if !errors.As(err, &e) || e.Code != broker.EFORBIDDEN || !slices.Contains(e.Reasons, tt.reason) {
				t.Fatalf("renew: %v, want forbidden with reason %s", err, tt.reason)
			}
			got, _ := f.svc.Leases().Get(ctx, l.ID)
			if want := map[bool]broker.LeaseState{true: broker.StateRevoking, false: broker.StateActive}[tt.name == "Quarantined"]; got.State != want {
				t.Fatalf("lease is %s after the refused renewal, want %s", got.State, want)
			}
			if !got.ExpiresAt.Equal(l.ExpiresAt) {
				t.Fatalf("a refused renewal moved the expiry from %s to %s", l.ExpiresAt, got.ExpiresAt)
			}
			f.events(t)
		})
	}
}

// Reconciliation while a request is in flight leaves it alone: its lease
// ends active and its credential alive.
func TestControls_ReconcileDuringFlight(t *testing.T) {
	f := newFixture(t)
	entered, release := f.backend.Block()
	defer release()
	done := f.issueAsync(broker.IssueRequest{Agent: reportBot, Task: "report", Params: eu, Reason: "race"})
	id := <-entered
	if err := f.svc.Leases().Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	release()
	r := <-done
	if r.err != nil {
		t.Fatalf("request in flight during reconciliation: %v", r.err)
	}
	if err := f.svc.Leases().Reconcile(ctx); err != nil { // and after it committed
		t.Fatal(err)
	}
	l, err := f.svc.Leases().Get(ctx, id)
	if err != nil || l.State != broker.StateActive || !f.backend.Alive(id) {
		t.Fatalf("lease after reconciliation = %+v, %v (alive %v); want active", l, err, f.backend.Alive(id))
	}
	f.events(t)
}

// An intent left by a commit that failed at runtime is reconciled by the
// next pass, without a restart.
func TestControls_ReconcileOrphanedIntent(t *testing.T) {
	f := newFixture(t)
	f.store.fail = func(c broker.Change) bool { return len(c.Uses) > 0 }
	f.backend.SetErrors(nil, errors.New("revoke refused")) // revokeNow fails too
	_, err := f.svc.Issue(ctx, broker.IssueRequest{Agent: reportBot, Task: "report", Params: eu})
	if broker.ErrorCode(err) != broker.EUNAVAILABLE {
		t.Fatalf("issue with a failing commit: %v, want unavailable", err)
	}
	f.store.fail = nil
	f.backend.SetErrors(nil, nil)
	intents, _ := f.store.Intents(ctx)
	if len(intents) != 1 {
		t.Fatalf("%d intents after the failed commit, want 1", len(intents))
	}
	if err := f.svc.Leases().Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	l, err := f.svc.Leases().Get(ctx, intents[0].ID)
	if err != nil || l.State != broker.StateRevoked || f.backend.Alive(l.ID) {
		t.Fatalf("orphaned intent after reconciliation: %+v, %v; want revoked", l, err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
