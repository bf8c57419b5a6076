package broker_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
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

const (
	reportBot = "spiffe://example.org/agent/report-bot"
	ticketBot = "spiffe://example.org/agent/ticket-bot"
	operator  = "spiffe://example.org/ops/alice"
	admin     = "spiffe://example.org/ops/ada"
)

// canary is the secret the fake backend mints: it must never show up in
// the store, the audit log or an error (invariant 1).
const canary = brokertest.Canary

func loadPolicy(t testing.TB) *templates.Policy {
	return brokertest.LoadTestPolicy(t)
}

// failingStore wraps a Store and fails Apply when failNext says so.
type failingStore struct {
	broker.Store
	fail   func(broker.Change) bool
	hang   func(broker.Change) bool // blocks, ignoring ctx, until unhang is closed: a hung disk
	unhang chan struct{}
}

func (s *failingStore) Apply(ctx context.Context, c broker.Change) ([]broker.Event, error) {
	if s.hang != nil && s.hang(c) {
		<-s.unhang
	}
	if s.fail != nil && s.fail(c) {
		return nil, fmt.Errorf("injected: %w", broker.ErrStoreUnavailable)
	}
	return s.Store.Apply(ctx, c)
}

type fixture struct {
	svc     *broker.Service
	store   *failingStore
	backend *brokertest.Backend
	clock   *brokertest.Clock
	dbPath  string
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	dbPath := filepath.Join(t.TempDir(), "latch.db")
	// A Tuesday in March, outside the billing-close window (28th..2nd).
	clk := brokertest.NewClock(time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC))
	bs, err := boltstore.Open(dbPath, boltstore.Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bs.Close() }) // after unhang: cleanups run last first
	fs := &failingStore{Store: bs, unhang: make(chan struct{})}
	t.Cleanup(func() { close(fs.unhang) })
	fb := brokertest.NewBackend()
	svc, err := broker.NewService(context.Background(), broker.Config{
		Store:        fs,
		Policy:       loadPolicy(t),
		Backends:     map[string]broker.Backend{"fake": fb},
		Now:          clk.Now,
		AuditTimeout: 20 * time.Second, // generous: a loaded CI machine must not turn slow fsyncs into failures
		RetryBase:    time.Second,
		RetryMax:     8 * time.Second,
		MaxAttempts:  3,
	})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{svc: svc, store: fs, backend: fb, clock: clk, dbPath: dbPath}
}

func (f *fixture) issue(t testing.TB, agent, task string, params map[string]string) *broker.Issued {
	t.Helper()
	res, err := f.svc.Issue(context.Background(), broker.IssueRequest{Agent: agent, Task: task, Params: params, Reason: "test"})
	if err != nil {
		t.Fatalf("Issue(%s, %s): %v", agent, task, err)
	}
	return res
}

func (f *fixture) events(t testing.TB) []broker.Event {
	t.Helper()
	var evs []broker.Event
	var v broker.ChainVerifier
	err := f.store.Events(context.Background(), 0, func(e broker.Event) (bool, error) {
		if err := v.Next(e); err != nil {
			return false, err
		}
		evs = append(evs, e)
		return true, nil
	})
	if err != nil {
		t.Fatalf("audit chain: %v", err)
	}
	return evs
}

func lastEvent(t testing.TB, f *fixture) broker.Event {
	evs := f.events(t)
	if len(evs) == 0 {
		t.Fatal("no audit events")
	}
	return evs[len(evs)-1]
}

func TestService_Issue(t *testing.T) {
	f := newFixture(t)
	res := f.issue(t, reportBot, "report", map[string]string{"region": "eu"})
	if res.Secret.Reveal()["password"] != canary {
		t.Fatal("issued secret is not the minted one")
	}
	l := res.Lease
	if l.State != broker.StateActive || l.Agent != reportBot || l.Task != "report" || l.TemplateVersion == "" {
		t.Fatalf("lease = %+v", l)
	}
	if want := f.clock.Now().Add(10 * time.Minute); !l.ExpiresAt.Equal(want) {
		t.Fatalf("ExpiresAt = %s, want latch's TTL %s (not the backend's longer one)", l.ExpiresAt, want)
	}
	stored, err := f.svc.Leases().Get(context.Background(), l.ID)
	if err != nil || stored.State != broker.StateActive {
		t.Fatalf("stored lease = %+v, %v", stored, err)
	}
	if intents, _ := f.store.Intents(context.Background()); len(intents) != 0 {
		t.Fatalf("intent left after commit: %d", len(intents))
	}
	ev := lastEvent(t, f)
	if ev.Type != broker.EventIssue || ev.Lease != l.ID || ev.Actor != reportBot {
		t.Fatalf("last event = %+v, want the issue of %s", ev, l.ID)
	}
}

func TestService_Issue_Denied(t *testing.T) {
	tests := []struct {
		name      string
		agent     string
		task      string
		params    map[string]string
		setup     func(*fixture)
		reason    templates.ReasonCode
		violation bool
	}{
		{name: "ErrUnknownAgent", agent: "spiffe://example.org/intruder", task: "report", params: map[string]string{"region": "eu"}, reason: templates.ReasonUnknownAgent, violation: true},
		{name: "ErrUnknownTask", agent: reportBot, task: "drop-tables", reason: templates.ReasonUnknownTask, violation: true},
		{name: "ErrTaskNotGranted", agent: reportBot, task: "ticket", params: map[string]string{"ticket": "1"}, reason: templates.ReasonTaskNotGranted, violation: true},
		{name: "ErrParamConstraint", agent: reportBot, task: "report", params: map[string]string{"region": "mars"}, reason: templates.ReasonParamConstraint, violation: true},
		{name: "ErrUnknownParam", agent: reportBot, task: "report", params: map[string]string{"region": "eu", "x": "1"}, reason: templates.ReasonUnknownParam, violation: true},
		{name: "ErrMissingParam", agent: reportBot, task: "report", reason: templates.ReasonMissingParam},
		{name: "ErrFrozen", agent: reportBot, task: "report", params: map[string]string{"region": "eu"},
			setup:  func(f *fixture) { f.clock.Add(18 * 24 * time.Hour) }, // March 28th
			reason: templates.ReasonFrozen},
		{name: "ErrGlobalFreeze", agent: reportBot, task: "report", params: map[string]string{"region": "eu"},
			setup: func(f *fixture) {
				if err := f.svc.Agents().SetFreeze(context.Background(), operator, true, "incident"); err != nil {
					panic(err)
				}
			}, reason: templates.ReasonGlobalFreeze},
		{name: "ErrAgentPaused", agent: reportBot, task: "report", params: map[string]string{"region": "eu"},
			setup: func(f *fixture) {
				if err := f.svc.Agents().SetState(context.Background(), operator, reportBot, broker.AgentPaused, "odd"); err != nil {
					panic(err)
				}
			}, reason: templates.ReasonAgentPaused, violation: true},
		{name: "ErrAgentQuarantined", agent: reportBot, task: "report", params: map[string]string{"region": "eu"},
			setup: func(f *fixture) {
				if err := f.svc.Agents().SetState(context.Background(), operator, reportBot, broker.AgentQuarantined, "leak"); err != nil {
					panic(err)
				}
			}, reason: templates.ReasonAgentQuarantined, violation: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			if tt.setup != nil {
				tt.setup(f)
			}
			_, err := f.svc.Issue(context.Background(), broker.IssueRequest{Agent: tt.agent, Task: tt.task, Params: tt.params})
			var e *broker.Error
			if !errors.As(err, &e) || e.Code != broker.EFORBIDDEN {
				t.Fatalf("err = %v, want a forbidden *broker.Error", err)
			}
			if len(e.Reasons) == 0 || !bytes.HasPrefix([]byte(e.Reasons[0]), []byte(tt.reason)) {
				t.Fatalf("reasons = %v, want %s first", e.Reasons, tt.reason)
			}
			if tt.reason == templates.ReasonFrozen && (e.NextAllowedAt.IsZero() || e.Reasons[0] != "frozen:billing-close") {
				t.Fatalf("frozen denial must name the window and next_allowed_at: %+v", e)
			}
			if f.backend.Mints.Load() != 0 {
				t.Fatal("a denied request reached the backend")
			}
			ev := lastEvent(t, f)
			wantType := broker.EventDeny
			if tt.violation {
				wantType = broker.EventViolation
			}
			if ev.Type != wantType || ev.Actor != tt.agent {
				t.Fatalf("last event = %s by %s, want %s by %s", ev.Type, ev.Actor, wantType, tt.agent)
			}
		})
	}
}

// TestService_Issue_StrangerLearnsNothing: a caller that is not a
// registered agent, or asks for a template not granted to it, is told only
// that, during a deny window and with bad parameters: no parameter, window
// or next_allowed_at. The audit keeps every reason.
func TestService_Issue_StrangerLearnsNothing(t *testing.T) {
	tests := []struct {
		name, agent, task string
		params            map[string]string
		want              string
	}{
		{"Unregistered", "spiffe://example.org/intruder", "report", map[string]string{"region": "mars", "x": "1"}, string(templates.ReasonUnknownAgent)},
		{"NotGranted", reportBot, "ticket", map[string]string{"ticket": "'; drop", "y": "1"}, string(templates.ReasonTaskNotGranted)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.clock.Add(18 * 24 * time.Hour) // March 28th: in report's deny window
			_, err := f.svc.Issue(context.Background(), broker.IssueRequest{Agent: tt.agent, Task: tt.task, Params: tt.params})
			var e *broker.Error
			if !errors.As(err, &e) || e.Code != broker.EFORBIDDEN {
				t.Fatalf("err = %v, want a forbidden *broker.Error", err)
			}
			if !slices.Equal(e.Reasons, []string{tt.want}) || !e.NextAllowedAt.IsZero() {
				t.Fatalf("a stranger was told reasons %v, next_allowed_at %v; want only %s", e.Reasons, e.NextAllowedAt, tt.want)
			}
			for _, leak := range []string{"region", "drop", "billing", "param", "window"} {
				if strings.Contains(e.Message, leak) {
					t.Fatalf("message %q tells a stranger about %q", e.Message, leak)
				}
			}
			if ev := lastEvent(t, f); len(ev.Reasons) < 2 {
				t.Fatalf("the audit must keep every reason: %v", ev.Reasons)
			}
		})
	}
}

// The approval flow itself is tested in approval_test.go.
func TestService_Issue_ApprovalRequiredWaits(t *testing.T) {
	f := newFixture(t)
	res, err := f.svc.Issue(context.Background(), broker.IssueRequest{Agent: ticketBot, Task: "ticket", Params: map[string]string{"ticket": "42"}})
	if err != nil || res.Pending == nil || res.Lease != nil || f.backend.Mints.Load() != 0 {
		t.Fatalf("Issue = %+v, %v, mints = %d; a high-tier task must wait for approval, unminted", res, err, f.backend.Mints.Load())
	}
}

func TestService_Issue_Idempotent(t *testing.T) {
	f := newFixture(t)
	req := broker.IssueRequest{Agent: reportBot, Task: "report", Params: map[string]string{"region": "us"}, RequestID: "req-1"}
	var wg sync.WaitGroup
	results := make([]*broker.Issued, 8)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := f.svc.Issue(context.Background(), req)
			if err != nil {
				t.Error(err)
				return
			}
			results[i] = res
		}()
	}
	wg.Wait()
	if n := f.backend.Mints.Load(); n != 1 {
		t.Fatalf("backend minted %d times for one request_id, want 1", n)
	}
	fresh := 0
	for _, r := range results {
		if r == nil {
			t.FailNow()
		}
		if r.Lease.ID != results[0].Lease.ID {
			t.Fatalf("retries got different leases: %s vs %s", r.Lease.ID, results[0].Lease.ID)
		}
		if !r.Replayed {
			fresh++
		}
	}
	if fresh != 1 {
		t.Fatalf("%d responses carried a fresh secret, want exactly 1", fresh)
	}
}

func TestService_Issue_BackendUnavailable(t *testing.T) {
	f := newFixture(t)
	f.backend.SetErrors(fmt.Errorf("vault down: %w", broker.ErrBackendUnavailable), nil)
	_, err := f.svc.Issue(context.Background(), broker.IssueRequest{Agent: reportBot, Task: "report", Params: map[string]string{"region": "eu"}})
	if broker.ErrorCode(err) != broker.EUNAVAILABLE {
		t.Fatalf("err = %v, want unavailable", err)
	}
	ls, _ := f.svc.Leases().List(context.Background(), broker.LeaseFilter{})
	if len(ls) != 1 || ls[0].State != broker.StateFailed {
		t.Fatalf("leases = %+v, want one failed lease", ls)
	}
	if intents, _ := f.store.Intents(context.Background()); len(intents) != 0 {
		t.Fatal("failed mint left its intent")
	}
}

// Invariant 5: when the lease and its audit event cannot be committed, no
// secret is returned and the minted one is revoked.
func TestService_Issue_AuditFailsClosed(t *testing.T) {
	f := newFixture(t)
	f.store.fail = func(c broker.Change) bool { return len(c.PutLeases) > 0 }
	start := time.Now()
	res, err := f.svc.Issue(context.Background(), broker.IssueRequest{Agent: reportBot, Task: "report", Params: map[string]string{"region": "eu"}})
	if err == nil || res != nil {
		t.Fatalf("Issue returned %+v, %v; want no result when the audit append fails", res, err)
	}
	if broker.ErrorCode(err) != broker.EUNAVAILABLE {
		t.Fatalf("err = %v, want unavailable", err)
	}
	if bytes.Contains([]byte(err.Error()), []byte(canary)) {
		t.Fatal("the error carries the secret")
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("failing closed took %s", time.Since(start))
	}
	if f.backend.Revokes.Load() != 1 {
		t.Fatalf("minted secret revoked %d times, want 1", f.backend.Revokes.Load())
	}
}

func TestService_RevokeSelectors(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		sel  broker.RevokeSelector
		want int // of: report-bot report eu, report-bot report us, ticket-bot report eu
	}{
		{"Agent", broker.RevokeSelector{Agent: reportBot}, 2},
		{"Task", broker.RevokeSelector{Task: "report"}, 3},
		{"All", broker.RevokeSelector{All: true}, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			a := f.issue(t, reportBot, "report", map[string]string{"region": "eu"})
			f.issue(t, reportBot, "report", map[string]string{"region": "us"})
			f.issue(t, ticketBot, "report", map[string]string{"region": "eu"})
			n, err := f.svc.Leases().Revoke(ctx, operator, "test", tt.sel)
			if err != nil || n != tt.want {
				t.Fatalf("Revoke = %d, %v; want %d", n, err, tt.want)
			}
			if done, err := f.svc.Leases().ProcessRevocations(ctx); err != nil || done != tt.want {
				t.Fatalf("ProcessRevocations = %d, %v; want %d", done, err, tt.want)
			}
			if f.backend.Alive(a.Lease.ID) {
				t.Fatal("revoked lease still alive in the backend")
			}
			revoked, _ := f.svc.Leases().List(ctx, broker.LeaseFilter{State: broker.StateRevoked})
			if len(revoked) != tt.want {
				t.Fatalf("%d leases revoked, want %d", len(revoked), tt.want)
			}
		})
	}
	// A template's name takes every version of it; a version (or the
	// prefix lease list prints) narrows to one.
	t.Run("Template", func(t *testing.T) {
		f := newFixture(t)
		v1 := f.issue(t, reportBot, "report", map[string]string{"region": "eu"}).Lease
		tmpls := maps.Clone(brokertest.Templates)
		tmpls["report.yaml"] = strings.Replace(tmpls["report.yaml"], "ttl: 10m\n", "ttl: 9m\n", 1)
		must(t, f.svc.SetPolicy(ctx, brokertest.LoadPolicy(t, brokertest.Policy, tmpls), "test"))
		v2 := f.issue(t, reportBot, "report", map[string]string{"region": "eu"}).Lease
		v2b := f.issue(t, reportBot, "report", map[string]string{"region": "us"}).Lease
		if v1.TemplateVersion == v2.TemplateVersion {
			t.Fatal("the reload did not change report's version")
		}
		for _, step := range []struct {
			sel  broker.RevokeSelector
			want []*broker.Lease
		}{
			{broker.RevokeSelector{Template: "report", Version: "sha256:00000000"}, nil},
			{broker.RevokeSelector{Template: "report", Version: v1.TemplateVersion[:len("sha256:")+12]}, []*broker.Lease{v1}},
			{broker.RevokeSelector{Template: "nightly"}, nil},
			{broker.RevokeSelector{Template: "report"}, []*broker.Lease{v2, v2b}},
		} {
			n, err := f.svc.Leases().Revoke(ctx, operator, "drift", step.sel)
			if err != nil || n != len(step.want) {
				t.Fatalf("Revoke(%+v) = %d, %v; want %d", step.sel, n, err, len(step.want))
			}
			if _, err := f.svc.Leases().ProcessRevocations(ctx); err != nil {
				t.Fatal(err)
			}
			for _, l := range step.want {
				if f.backend.Alive(l.ID) {
					t.Errorf("Revoke(%+v): lease %s still alive in the backend", step.sel, l.ID)
				}
			}
		}
		_, err := f.svc.Leases().Revoke(ctx, operator, "x", broker.RevokeSelector{All: true, Version: v1.TemplateVersion})
		if broker.ErrorCode(err) != broker.EINVALID {
			t.Fatalf("a version without a template: err = %v, want invalid", err)
		}
	})
	t.Run("ErrNotFound", func(t *testing.T) {
		f := newFixture(t)
		_, err := f.svc.Leases().Revoke(ctx, operator, "x", broker.RevokeSelector{Lease: "01NOSUCHLEASE"})
		if broker.ErrorCode(err) != broker.ENOTFOUND {
			t.Fatalf("err = %v, want not found", err)
		}
	})
	t.Run("ErrInvalid", func(t *testing.T) {
		f := newFixture(t)
		_, err := f.svc.Leases().Revoke(ctx, operator, "x", broker.RevokeSelector{Agent: reportBot, All: true})
		if broker.ErrorCode(err) != broker.EINVALID {
			t.Fatalf("err = %v, want invalid", err)
		}
	})
}

func TestService_Quarantine(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	a := f.issue(t, reportBot, "report", map[string]string{"region": "eu"})
	b := f.issue(t, reportBot, "report", map[string]string{"region": "us"})
	if err := f.svc.Agents().SetState(ctx, operator, reportBot, broker.AgentQuarantined, "leak"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Leases().ProcessRevocations(ctx); err != nil {
		t.Fatal(err)
	}
	for _, l := range []*broker.Lease{a.Lease, b.Lease} {
		if f.backend.Alive(l.ID) {
			t.Fatalf("lease %s alive after quarantine", l.ID)
		}
	}
	if _, err := f.svc.Issue(ctx, broker.IssueRequest{Agent: reportBot, Task: "report", Params: map[string]string{"region": "eu"}}); broker.ErrorCode(err) != broker.EFORBIDDEN {
		t.Fatalf("quarantined agent got %v, want forbidden", err)
	}
	if err := f.svc.Agents().SetState(ctx, admin, reportBot, broker.AgentActive, "fixed"); err != nil {
		t.Fatal(err)
	}
	f.issue(t, reportBot, "report", map[string]string{"region": "eu"})
}

func TestService_RenewUpToMaxTTL(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	l := f.issue(t, reportBot, "report", map[string]string{"region": "eu"}).Lease
	max := l.MaxExpiresAt
	for i := 0; i < 5; i++ {
		f.clock.Add(8 * time.Minute)
		got, err := f.svc.Leases().Renew(ctx, reportBot, l.ID, 0)
		if err != nil {
			if broker.ErrorCode(err) != broker.ECONFLICT {
				t.Fatalf("renew %d: %v", i, err)
			}
			if !f.clock.Now().Add(10 * time.Minute).After(max) {
				t.Fatalf("renew %d refused before the max TTL: %v", i, err)
			}
			break
		}
		if got.ExpiresAt.After(max) {
			t.Fatalf("renewed past max TTL: %s > %s", got.ExpiresAt, max)
		}
	}
	got, _ := f.svc.Leases().Get(ctx, l.ID)
	if !got.ExpiresAt.Equal(max) {
		t.Fatalf("after renewals ExpiresAt = %s, want max %s", got.ExpiresAt, max)
	}
	if _, err := f.svc.Leases().Renew(ctx, ticketBot, l.ID, 0); broker.ErrorCode(err) != broker.ENOTFOUND {
		t.Fatalf("another agent renewing: %v, want not found", err)
	}
}

func TestService_Release(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	l := f.issue(t, reportBot, "report", map[string]string{"region": "eu"}).Lease
	if err := f.svc.Leases().Release(ctx, ticketBot, l.ID); broker.ErrorCode(err) != broker.ENOTFOUND {
		t.Fatalf("release of another agent's lease: %v, want not found", err)
	}
	if err := f.svc.Leases().Release(ctx, reportBot, l.ID); err != nil {
		t.Fatal(err)
	}
	f.svc.Leases().ProcessRevocations(ctx)
	if got, _ := f.svc.Leases().Get(ctx, l.ID); got.State != broker.StateRevoked || f.backend.Alive(l.ID) {
		t.Fatalf("released lease state = %s", got.State)
	}
	if err := f.svc.Leases().Release(ctx, reportBot, l.ID); broker.ErrorCode(err) != broker.ECONFLICT {
		t.Fatalf("second release: %v, want conflict", err)
	}
}

func TestService_ExpirySweep(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	l := f.issue(t, reportBot, "report", map[string]string{"region": "eu"}).Lease
	if n, _ := f.svc.Leases().Sweep(ctx); n != 0 {
		t.Fatalf("swept %d leases before their TTL", n)
	}
	f.clock.Add(10*time.Minute + time.Second)
	if n, err := f.svc.Leases().Sweep(ctx); n != 1 || err != nil {
		t.Fatalf("Sweep = %d, %v; want 1", n, err)
	}
	f.svc.Leases().ProcessRevocations(ctx)
	got, _ := f.svc.Leases().Get(ctx, l.ID)
	if got.State != broker.StateExpired || f.backend.Alive(l.ID) {
		t.Fatalf("state after expiry = %s, alive = %v", got.State, f.backend.Alive(l.ID))
	}
	if ev := lastEvent(t, f); ev.Type != broker.EventExpire || ev.Lease != l.ID {
		t.Fatalf("last event = %+v, want expire of %s", ev, l.ID)
	}
}

// Invariant 4: a revocation is retried with backoff, marked irrevocable
// when retries run out, and still completed when the backend returns.
func TestService_RevocationRetries(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	l := f.issue(t, reportBot, "report", map[string]string{"region": "eu"}).Lease
	f.backend.SetErrors(nil, fmt.Errorf("vault sealed: %w", broker.ErrBackendUnavailable))
	if _, err := f.svc.Leases().Revoke(ctx, operator, "leak", broker.RevokeSelector{Lease: l.ID}); err != nil {
		t.Fatal(err)
	}
	for range 3 { // MaxAttempts
		f.svc.Leases().ProcessRevocations(ctx)
		f.clock.Add(time.Minute)
	}
	got, _ := f.svc.Leases().Get(ctx, l.ID)
	if got.State != broker.StateIrrevocable || got.LastError == "" {
		t.Fatalf("after exhausting retries: state %s, last error %q", got.State, got.LastError)
	}
	if depth, _ := f.store.QueueDepth(ctx); depth != 1 {
		t.Fatalf("queue depth = %d; an irrevocable lease must stay queued", depth)
	}
	f.backend.SetErrors(nil, nil)
	f.clock.Add(time.Minute)
	f.svc.Leases().ProcessRevocations(ctx)
	if got, _ := f.svc.Leases().Get(ctx, l.ID); got.State != broker.StateRevoked {
		t.Fatalf("after Vault returned: state %s, want revoked", got.State)
	}
}

// Invariant 3: intents left by a crash are revoked (when they name
// something) or closed (when they do not) at the next start.
func TestService_Reconcile(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	now := f.clock.Now()
	withRefs := &broker.Lease{ID: "01JCRASHWITHREFS000000000A", Asked: broker.Asked{Agent: reportBot, Task: "report", Backend: "fake"},
		Refs: broker.Refs{TokenAccessor: "acc-01JCRASHWITHREFS000000000A"}, IssuedAt: now, ExpiresAt: now.Add(time.Minute), State: broker.StatePending}
	noRefs := &broker.Lease{ID: "01JCRASHNOREFS00000000000B", Asked: broker.Asked{Agent: reportBot, Task: "report", Backend: "fake"},
		IssuedAt: now, ExpiresAt: now.Add(time.Minute), State: broker.StatePending}
	f.backend.MarkAlive(withRefs.ID)
	if _, err := f.store.Apply(ctx, broker.Change{PutIntents: []*broker.Lease{withRefs, noRefs}}); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.Leases().Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if f.backend.Alive(withRefs.ID) {
		t.Fatal("the crashed mint is still alive in the backend")
	}
	for id, want := range map[string]broker.LeaseState{withRefs.ID: broker.StateRevoked, noRefs.ID: broker.StateFailed} {
		if got, err := f.svc.Leases().Get(ctx, id); err != nil || got.State != want {
			t.Fatalf("lease %s after reconcile: %+v, %v; want %s", id, got, err, want)
		}
	}
	if intents, _ := f.store.Intents(ctx); len(intents) != 0 {
		t.Fatalf("%d intents left after reconcile", len(intents))
	}
}

// Invariant 1: the minted secret appears nowhere in the database file.
func TestService_SecretNeverStored(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	l := f.issue(t, reportBot, "report", map[string]string{"region": "eu"}).Lease
	f.svc.Leases().Renew(ctx, reportBot, l.ID, 0)
	f.svc.Leases().Revoke(ctx, operator, "done", broker.RevokeSelector{All: true})
	f.svc.Leases().ProcessRevocations(ctx)
	f.events(t)
	db, err := os.ReadFile(f.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(db, []byte(canary)) {
		t.Fatal("the secret was written to the bbolt file")
	}
	if !bytes.Contains(db, []byte(l.ID)) {
		t.Fatal("the canary scan read the wrong file: the lease ID is not in it either")
	}
}

func BenchmarkService_Issue(b *testing.B) {
	f := newFixture(b)
	params := map[string]string{"region": "eu"}
	var mu sync.Mutex
	var lat []time.Duration
	b.SetParallelism(16) // 2 cores × 16 = 32 concurrent callers
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var local []time.Duration
		for pb.Next() {
			start := time.Now()
			if _, err := f.svc.Issue(context.Background(), broker.IssueRequest{Agent: reportBot, Task: "report", Params: params}); err != nil {
				b.Error(err)
				return
			}
			local = append(local, time.Since(start))
		}
		mu.Lock()
		lat = append(lat, local...)
		mu.Unlock()
	})
	b.StopTimer()
	reportLatency(b, lat)
}

func TestService_Issue_Limits(t *testing.T) {
	ctx := context.Background()
	eu := map[string]string{"region": "eu"}
	tests := []struct {
		name   string
		agent  string
		task   string
		ok     int // requests that succeed before the limit
		reason string
	}{
		{"ErrRateLimited", "spiffe://example.org/agent/chatty", "report", 2, "rate_limited"},
		{"ErrAgentBudget", "spiffe://example.org/agent/hoarder", "report", 2, "agent_budget"},
		{"ErrTemplateBudget", "spiffe://example.org/agent/hoarder", "budgeted", 1, "template_budget"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			for range tt.ok {
				f.issue(t, tt.agent, tt.task, eu)
			}
			_, err := f.svc.Issue(ctx, broker.IssueRequest{Agent: tt.agent, Task: tt.task, Params: eu})
			var e *broker.Error
			if !errors.As(err, &e) || e.Code != broker.ELIMIT || len(e.Reasons) != 1 || e.Reasons[0] != tt.reason || e.RetryAfter <= 0 {
				t.Fatalf("err = %#v, want limit %s with a retry-after", err, tt.reason)
			}
			if n := f.backend.Mints.Load(); n != int64(tt.ok) {
				t.Fatalf("backend minted %d, want %d", n, tt.ok)
			}
		})
	}
	t.Run("DenialsSpendTheRate", func(t *testing.T) {
		f := newFixture(t)
		chatty, mars := "spiffe://example.org/agent/chatty", map[string]string{"region": "mars"}
		for range 2 {
			if _, err := f.svc.Issue(ctx, broker.IssueRequest{Agent: chatty, Task: "report", Params: mars}); broker.ErrorCode(err) != broker.EFORBIDDEN {
				t.Fatalf("bad region: %v, want denied", err)
			}
		}
		before := lastEvent(t, f).Seq
		for range 100 {
			if _, err := f.svc.Issue(ctx, broker.IssueRequest{Agent: chatty, Task: "report", Params: mars}); broker.ErrorCode(err) != broker.ELIMIT {
				t.Fatalf("a denial past the rate: %v, want limited", err)
			}
		}
		if after := lastEvent(t, f).Seq; after != before {
			t.Fatalf("denials past the rate wrote %d audit events, want none", after-before)
		}
		// And the rate they spent is the one issues use.
		if _, err := f.svc.Issue(ctx, broker.IssueRequest{Agent: chatty, Task: "report", Params: eu}); broker.ErrorCode(err) != broker.ELIMIT {
			t.Fatalf("a good request after denials used the rate: %v, want limited", err)
		}
	})
	t.Run("BudgetFreedByRelease", func(t *testing.T) {
		f := newFixture(t)
		l := f.issue(t, "spiffe://example.org/agent/hoarder", "budgeted", eu).Lease
		if err := f.svc.Leases().Release(ctx, l.Agent, l.ID); err != nil {
			t.Fatal(err)
		}
		// A lease being revoked still holds its credential, and its place.
		_, err := f.svc.Issue(ctx, broker.IssueRequest{Agent: l.Agent, Task: "budgeted", Params: eu})
		if broker.ErrorCode(err) != broker.ELIMIT {
			t.Fatalf("issue while the released lease is revoking: %v, want limit", err)
		}
		if _, err := f.svc.Leases().ProcessRevocations(ctx); err != nil {
			t.Fatal(err)
		}
		f.issue(t, "spiffe://example.org/agent/hoarder", "budgeted", eu)
	})
}

// Invariant 5, hung disk: a commit that never returns still ends the
// request within the audit deadline, without the secret.
func TestService_Issue_HungStoreEndsWithinDeadline(t *testing.T) {
	f := newFixture(t)
	svc, err := broker.NewService(context.Background(), broker.Config{Store: f.store, Policy: loadPolicy(t),
		Backends: map[string]broker.Backend{"fake": f.backend}, Now: f.clock.Now, AuditTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f.store.hang = func(c broker.Change) bool { return len(c.PutLeases) > 0 }
	start := time.Now()
	res, err := svc.Issue(context.Background(), broker.IssueRequest{Agent: reportBot, Task: "report", Params: map[string]string{"region": "eu"}})
	if res != nil || broker.ErrorCode(err) != broker.EUNAVAILABLE {
		t.Fatalf("Issue = %+v, %v; want unavailable and no result", res, err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("request took %s with a 1s audit deadline", took)
	}
	if f.backend.Revokes.Load() != 1 {
		t.Fatalf("minted secret revoked %d times, want 1", f.backend.Revokes.Load())
	}
}

// TestService_MediumTierAlerts: a lease issued at a tier that alerts
// (medium, here by escalation) gets an alert event in the same commit as
// its issue event, naming the rule that raised the tier; a low one does not.
func TestService_MediumTierAlerts(t *testing.T) {
	f := newFixture(t)
	tmpls := maps.Clone(brokertest.Templates)
	tmpls["report.yaml"] = strings.Replace(tmpls["report.yaml"], "risk: low\n", "risk: low\nescalate:\n  - { when: 'params.region == \"us\"', to: medium }\n", 1)
	if err := f.svc.SetPolicy(context.Background(), brokertest.LoadPolicy(t, brokertest.Policy, tmpls), "test"); err != nil {
		t.Fatal(err)
	}
	f.issue(t, reportBot, "report", map[string]string{"region": "eu"})
	if evs := eventsOf(t, f, broker.EventAlert); len(evs) != 0 {
		t.Fatalf("alert for a low-tier lease: %+v", evs)
	}
	res := f.issue(t, reportBot, "report", map[string]string{"region": "us"})
	evs := f.events(t)
	issue, alert := evs[len(evs)-2], evs[len(evs)-1]
	if issue.Type != broker.EventIssue || alert.Type != broker.EventAlert {
		t.Fatalf("last events %s, %s; want issue then alert", issue.Type, alert.Type)
	}
	if alert.Lease != res.Lease.ID || alert.Subject != reportBot || alert.Details["tier"] != "medium" ||
		!strings.Contains(alert.Details["tier_why"], `params.region == "us"`) {
		t.Fatalf("alert = %+v", alert)
	}
}

// TestService_SetPolicyNeedsItsBackends: a reload whose template names a
// backend the Service was not built with is refused, and the running
// policy stays.
func TestService_SetPolicyNeedsItsBackends(t *testing.T) {
	f := newFixture(t)
	running := f.svc.Policy()
	tmpls := maps.Clone(brokertest.Templates)
	tmpls["report.yaml"] = strings.Replace(tmpls["report.yaml"], "backend: fake", "backend: added-later", 1)
	pc, err := templates.ParsePolicy("policy.yaml", []byte(brokertest.Policy))
	if err != nil {
		t.Fatal(err)
	}
	src := templates.Source{Policy: pc, Backends: map[string]templates.Backend{"fake": {Type: "fake"}, "added-later": {Type: "fake"}}}
	for name, body := range tmpls {
		src.Templates = append(src.Templates, templates.File{Name: name, Data: []byte(body)})
	}
	p, err := templates.Load(src)
	if err != nil {
		t.Fatal(err)
	}
	err = f.svc.SetPolicy(context.Background(), p, "test")
	if err == nil || !strings.Contains(err.Error(), `"added-later"`) || !strings.Contains(err.Error(), "restart") {
		t.Fatalf("SetPolicy with an unknown backend: %v", err)
	}
	if f.svc.Policy() != running {
		t.Fatal("the refused policy was swapped in")
	}
}

// TestService_RefusalsCoalesced: a flood of one caller's refusals writes
// the first ten as they come and, when the window ends, one event that
// counts the rest, which Run writes.
func TestService_RefusalsCoalesced(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	intruder := "spiffe://example.org/intruder"
	start, _ := f.svc.Audit().LastSeq(ctx)
	for range 50 {
		_, _ = f.svc.Issue(ctx, broker.IssueRequest{Agent: intruder, Task: "report", Params: map[string]string{"region": "eu"}})
	}
	for range 5 {
		_ = f.svc.Audit().Reject(ctx, broker.Refusal{Actor: intruder, Endpoint: "POST /v1/credentials", Reason: "unknown_field"})
	}
	var evs []broker.Event
	_ = f.svc.Audit().Events(ctx, start, func(e broker.Event) (bool, error) { evs = append(evs, e); return true, nil })
	if len(evs) != 15 {
		t.Fatalf("%d events for 50 violations and 5 rejections, want 10 + 5", len(evs))
	}

	f.clock.Add(time.Minute)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- f.svc.Run(runCtx, nil) }()
	summary := make(chan broker.Event, 1)
	followCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err := f.svc.Audit().Follow(followCtx, start, broker.EventFilter{Types: []broker.EventType{broker.EventViolation}}, func(evs []broker.Event) error {
		for _, e := range evs {
			if e.Outcome == broker.OutcomeCoalesced {
				summary <- e
				return errors.New("found")
			}
		}
		return nil
	})
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-summary:
		if e.Actor != intruder || e.Details["count"] != "40" || e.Reasons[0] != string(templates.ReasonUnknownAgent) {
			t.Fatalf("summary = %+v, want intruder's 40 unknown_agent violations", e)
		}
	default:
		t.Fatalf("no coalesced event within 10s of the window's end: %v", err)
	}
}

// refuseUnlucky stands in for a backend's RenderCheck (templates.Backend.Check):
// it refuses ticket 13's rendered path.
type refuseUnlucky struct{}

func (refuseUnlucky) CheckRendered(r templates.Rendered) error {
	if r.Vars["path"] == "tickets/13" {
		return errors.New(`path "tickets/13" is refused`)
	}
	return nil
}

// TestService_Issue_BackendRefused: a request whose rendered values the
// backend's own check refuses is denied at evaluation, although it needs
// an approval: no approver is asked, the backend is never called, and the
// denial is audited as a violation.
func TestService_Issue_BackendRefused(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	pc, err := templates.ParsePolicy("policy.yaml", []byte(brokertest.Policy))
	if err != nil {
		t.Fatal(err)
	}
	tmpls := maps.Clone(brokertest.Templates)
	tmpls["ticket.yaml"] = "name: ticket\nbackend: fake\nparams: { ticket: { pattern: \"^[0-9]{1,9}$\" } }\n" +
		"vars: { path: \"tickets/{{ .params.ticket }}\" }\nttl: 5m\nrisk: high\n"
	src := templates.Source{Policy: pc, Backends: map[string]templates.Backend{"fake": {Type: "fake", Check: refuseUnlucky{}}}}
	for name, body := range tmpls {
		src.Templates = append(src.Templates, templates.File{Name: name, Data: []byte(body)})
	}
	p, err := templates.Load(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.svc.SetPolicy(ctx, p, "test"); err != nil {
		t.Fatal(err)
	}
	_, err = f.svc.Issue(ctx, broker.IssueRequest{Agent: ticketBot, Task: "ticket", Params: map[string]string{"ticket": "13"}})
	var e *broker.Error
	if !errors.As(err, &e) || e.Code != broker.EFORBIDDEN || len(e.Reasons) == 0 || e.Reasons[0] != string(templates.ReasonBackendRefused) {
		t.Fatalf("err = %v, want forbidden with %s", err, templates.ReasonBackendRefused)
	}
	if all, _ := f.svc.Approvals().List(ctx, broker.ApprovalFilter{}); len(all) != 0 || f.backend.Mints.Load() != 0 {
		t.Fatalf("approvals %d, mints %d: a refused request reached an approver or the backend", len(all), f.backend.Mints.Load())
	}
	if ev := lastEvent(t, f); ev.Type != broker.EventViolation || ev.Actor != ticketBot {
		t.Fatalf("last event = %s by %s, want a violation by %s", ev.Type, ev.Actor, ticketBot)
	}
	// The same template still asks for approval of a ticket it accepts.
	res, err := f.svc.Issue(ctx, broker.IssueRequest{Agent: ticketBot, Task: "ticket", Params: map[string]string{"ticket": "42"}})
	if err != nil || res.Pending == nil {
		t.Fatalf("Issue(42) = %+v, %v; want a pending approval", res, err)
	}
}
