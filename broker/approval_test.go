package broker_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/boltstore"
	"github.com/latchbroker/latch/broker/brokertest"
	"github.com/latchbroker/latch/templates"
)

// The approval tests have their own policy: approvers, an owner who is
// also an approver (so that only the owner rule refuses them), an agent
// that is misconfigured as an approver (so that only the self rule
// refuses it), and high and critical tasks.
const (
	deployBot = "spiffe://example.org/agent/deploy-bot"
	otherBot  = "spiffe://example.org/agent/other-bot"
	alice     = "spiffe://example.org/ops/alice" // approver
	carol     = "spiffe://example.org/ops/carol" // approver
	dave      = "spiffe://example.org/ops/dave"  // admin
	bob       = "spiffe://example.org/ops/bob"   // approver, and owner of deploy-bot
	vic       = "spiffe://example.org/ops/vic"   // viewer and revoker: no say in approvals
)

const approvalPolicy = `
operators:
  - { id: spiffe://example.org/ops/alice, roles: [approver] }
  - { id: spiffe://example.org/ops/carol, roles: [approver, revoker] }
  - { id: spiffe://example.org/ops/dave, roles: [admin] }
  - { id: spiffe://example.org/ops/bob, roles: [approver] }
  - { id: spiffe://example.org/ops/vic, roles: [viewer, revoker] }
  - { id: spiffe://example.org/agent/deploy-bot, roles: [approver] }
agents:
  - id: spiffe://example.org/agent/deploy-bot
    owner: spiffe://example.org/ops/bob
    templates: [rotate, drop-db]
  - id: spiffe://example.org/agent/other-bot
    owner: spiffe://example.org/ops/erin
    templates: [rotate]
`

const rotateTemplate = `
name: rotate
description: Rotate one key; high risk.
backend: tokens
params:
  key: { enum: [alpha, beta] }
vars: { role: "rotate-{{ .params.key }}" }
policy: |
  path "secret/data/keys/{{ .params.key }}" { capabilities = ["update"] }
ttl: 10m
max_ttl: 20m
risk: high
`

const dropDBTemplate = `
name: drop-db
description: Drop one scratch database; critical.
backend: tokens
params:
  db: { pattern: "^scratch-[0-9]{1,4}$" }
policy: |
  path "database/drop/{{ .params.db }}" { capabilities = ["update"] }
ttl: 5m
max_ttl: 10m
risk: critical
`

func loadApprovalPolicy(t testing.TB, rotate string) *templates.Policy {
	t.Helper()
	pc, err := templates.ParsePolicy("policy.yaml", []byte(approvalPolicy))
	if err != nil {
		t.Fatal(err)
	}
	p, err := templates.Load(templates.Source{
		Policy:   pc,
		Backends: map[string]templates.Backend{"tokens": {Type: templates.BackendVaultToken}},
		Templates: []templates.File{
			{Name: "rotate.yaml", Data: []byte(rotate)},
			{Name: "drop-db.yaml", Data: []byte(dropDBTemplate)},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func newApprovalFixture(t testing.TB) *fixture {
	t.Helper()
	dbPath := filepath.Join(t.TempDir(), "latch.db")
	clk := brokertest.NewClock(time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC))
	bs, err := boltstore.Open(dbPath, boltstore.Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bs.Close() })
	fs := &failingStore{Store: bs, unhang: make(chan struct{})}
	t.Cleanup(func() { close(fs.unhang) })
	fb := brokertest.NewBackend()
	svc, err := broker.NewService(context.Background(), broker.Config{
		Store:        fs,
		Policy:       loadApprovalPolicy(t, rotateTemplate),
		Backends:     map[string]broker.Backend{"tokens": fb},
		Now:          clk.Now,
		AuditTimeout: 20 * time.Second, // generous: a loaded CI machine must not turn slow fsyncs into failures
		ApprovalTTL:  time.Hour,
		PickupTTL:    15 * time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{svc: svc, store: fs, backend: fb, clock: clk, dbPath: dbPath}
}

var (
	rotateAlpha = map[string]string{"key": "alpha"}
	scratch7    = map[string]string{"db": "scratch-7"}
)

// request asks for task and expects a pending approval.
func (f *fixture) request(t testing.TB, agent, task string, params map[string]string) *broker.Approval {
	t.Helper()
	res, err := f.svc.Issue(context.Background(), broker.IssueRequest{Agent: agent, Task: task, Params: params,
		Reason: "rotate after the incident", TraceID: "trace-9"})
	if err != nil {
		t.Fatalf("Issue(%s, %s): %v", agent, task, err)
	}
	if res.Pending == nil || res.Lease != nil || !res.Secret.IsZero() {
		t.Fatalf("Issue(%s, %s) = %+v; want a pending approval and nothing minted", agent, task, res)
	}
	return res.Pending
}

func (f *fixture) review(t testing.TB, approver, id string, approve bool) *broker.Approval {
	t.Helper()
	a, err := f.svc.Approvals().Review(context.Background(), approver, id, approve, "checked with the on-call", false)
	if err != nil {
		t.Fatalf("Review by %s: %v", approver, err)
	}
	return a
}

func (f *fixture) pickup(agent, id string) (*broker.Issued, error) {
	return f.svc.Issue(context.Background(), broker.IssueRequest{Agent: agent, ApprovalID: id})
}

func wantCode(t testing.TB, err error, code, contains string) {
	t.Helper()
	var e *broker.Error
	if !errors.As(err, &e) || e.Code != code {
		t.Fatalf("err = %v, want %s", err, code)
	}
	if !strings.Contains(e.Message, contains) {
		t.Fatalf("message %q does not say %q", e.Message, contains)
	}
}

// eventsOf returns the audit events of one type.
func eventsOf(t testing.TB, f *fixture, typ broker.EventType) []broker.Event {
	t.Helper()
	var out []broker.Event
	for _, e := range f.events(t) {
		if e.Type == typ {
			out = append(out, e)
		}
	}
	return out
}

func TestApproval_RequestApprovePickup(t *testing.T) {
	ctx := context.Background()
	f := newApprovalFixture(t)
	a := f.request(t, deployBot, "rotate", rotateAlpha)
	if f.backend.Mints.Load() != 0 {
		t.Fatal("a request that needs approval reached the backend")
	}
	now := f.clock.Now()
	switch {
	case a.Status != broker.ApprovalPending, a.Agent != deployBot, a.Owner != bob, a.Task != "rotate",
		a.Params["key"] != "alpha", a.Tier != "high", a.Required != 1, a.TTL != 10*time.Minute,
		a.Reason != "rotate after the incident", a.TraceID != "trace-9", a.TemplateVersion == "",
		!a.ExpiresAt.Equal(now.Add(time.Hour)), len(a.TierWhy) == 0:
		t.Fatalf("approval = %+v", a)
	case !strings.Contains(a.Rendered.Policy, `secret/data/keys/alpha`), a.Rendered.Vars["role"] != "rotate-alpha":
		t.Fatalf("the approver does not see what would be minted: %+v", a.Rendered)
	case len(a.Reasons) == 0 || a.Reasons[0].Code != string(templates.ReasonTierApproval) || a.Reasons[0].Message == "":
		t.Fatalf("reasons = %+v, want the tier's", a.Reasons)
	}
	if stored, err := f.svc.Approvals().Get(ctx, a.ID); err != nil || stored.Status != broker.ApprovalPending || stored.Rendered.Policy != a.Rendered.Policy {
		t.Fatalf("stored approval = %+v, %v", stored, err)
	}
	if ev := lastEvent(t, f); ev.Type != broker.EventApprovalRequested || ev.Actor != deployBot || ev.Subject != deployBot || ev.Details["approval_id"] != a.ID || ev.Details["tier"] != "high" {
		t.Fatalf("last event = %+v, want approval_requested", ev)
	}

	_, err := f.pickup(deployBot, a.ID)
	wantCode(t, err, broker.ECONFLICT, "still pending")

	a = f.review(t, alice, a.ID, true)
	if a.Status != broker.ApprovalApproved || !a.PickupBy.Equal(now.Add(15*time.Minute)) || len(a.Reviews) != 1 || a.Reviews[0].Approver != alice {
		t.Fatalf("after one approval of a high request: %+v", a)
	}
	ev := lastEvent(t, f)
	if ev.Type != broker.EventApprovalApproved || ev.Actor != alice || ev.Subject != deployBot || ev.Details["reason"] != "checked with the on-call" || ev.Details["approval_id"] != a.ID {
		t.Fatalf("last event = %+v, want approval_approved by alice with her reason", ev)
	}

	res, err := f.pickup(deployBot, a.ID)
	if err != nil {
		t.Fatalf("pickup: %v", err)
	}
	if res.Secret.Reveal()["password"] != canary || res.Lease.ApprovalID != a.ID || res.Lease.Task != "rotate" || res.Lease.Reason != a.Reason {
		t.Fatalf("pickup = %+v", res.Lease)
	}
	if n := f.backend.Mints.Load(); n != 1 {
		t.Fatalf("backend minted %d times, want 1 (at pickup)", n)
	}
	used, _ := f.svc.Approvals().Get(ctx, a.ID)
	if used.Status != broker.ApprovalConsumed || used.LeaseID != res.Lease.ID {
		t.Fatalf("approval after pickup = %s, lease %q; want consumed by %s", used.Status, used.LeaseID, res.Lease.ID)
	}
	if ev := lastEvent(t, f); ev.Type != broker.EventIssue || ev.Lease != res.Lease.ID || ev.Details["approval_id"] != a.ID {
		t.Fatalf("last event = %+v, want the issue naming the approval", ev)
	}

	_, err = f.pickup(deployBot, a.ID)
	wantCode(t, err, broker.ECONFLICT, "already used")
	if n := f.backend.Mints.Load(); n != 1 {
		t.Fatalf("a second pickup minted again (%d mints)", n)
	}
}

func TestApproval_RequestIsIdempotent(t *testing.T) {
	ctx := context.Background()
	f := newApprovalFixture(t)
	req := broker.IssueRequest{Agent: deployBot, Task: "rotate", Params: rotateAlpha, RequestID: "req-1"}
	first, err := f.svc.Issue(ctx, req)
	if err != nil || first.Pending == nil {
		t.Fatalf("Issue = %+v, %v", first, err)
	}
	again, err := f.svc.Issue(ctx, req)
	if err != nil || again.Pending == nil || again.Pending.ID != first.Pending.ID || !again.Replayed {
		t.Fatalf("retry = %+v, %v; want the same approval %s, replayed", again, err, first.Pending.ID)
	}
	if all, _ := f.svc.Approvals().List(ctx, broker.ApprovalFilter{}); len(all) != 1 {
		t.Fatalf("%d approvals for one request_id, want 1", len(all))
	}
	if evs := eventsOf(t, f, broker.EventApprovalRequested); len(evs) != 1 {
		t.Fatalf("%d approval_requested events, want 1", len(evs))
	}
	bad := req
	bad.Task = "drop-db"
	_, err = f.svc.Issue(ctx, bad)
	wantCode(t, err, broker.ECONFLICT, "request_id")

	f.review(t, alice, first.Pending.ID, true)
	// The pickup inherits the request's ID, so a retry of the original
	// request now replays the lease — without its secret.
	picked, err := f.pickup(deployBot, first.Pending.ID)
	if err != nil {
		t.Fatal(err)
	}
	replay, err := f.svc.Issue(ctx, req)
	if err != nil || !replay.Replayed || replay.Lease == nil || replay.Lease.ID != picked.Lease.ID || !replay.Secret.IsZero() {
		t.Fatalf("retry after pickup = %+v, %v; want the lease replayed without a secret", replay, err)
	}
	if n := f.backend.Mints.Load(); n != 1 {
		t.Fatalf("backend minted %d times, want 1", n)
	}
}

func TestApproval_CriticalNeedsTwoDistinctApprovers(t *testing.T) {
	ctx := context.Background()
	f := newApprovalFixture(t)
	a := f.request(t, deployBot, "drop-db", scratch7)
	if a.Tier != "critical" || a.Required != 2 {
		t.Fatalf("tier %s, required %d; want critical needing 2", a.Tier, a.Required)
	}
	a = f.review(t, alice, a.ID, true)
	if a.Status != broker.ApprovalPending {
		t.Fatalf("after one of two approvals: %s", a.Status)
	}
	if ev := lastEvent(t, f); ev.Type != broker.EventApprovalReview || ev.Actor != alice || ev.Details["approvals"] != "1/2" {
		t.Fatalf("last event = %+v, want approval_review 1/2 by alice", ev)
	}
	_, err := f.svc.Approvals().Review(ctx, alice, a.ID, true, "really sure", false)
	wantCode(t, err, broker.ECONFLICT, "already reviewed")
	if got, _ := f.svc.Approvals().Get(ctx, a.ID); got.Status != broker.ApprovalPending || len(got.Approvers()) != 1 {
		t.Fatalf("the same approver twice counted: %+v", got)
	}
	_, err = f.pickup(deployBot, a.ID)
	wantCode(t, err, broker.ECONFLICT, "1 of 2")

	a = f.review(t, dave, a.ID, true) // admin holds the approver's rights
	if a.Status != broker.ApprovalApproved {
		t.Fatalf("after two distinct approvals: %s", a.Status)
	}
	res, err := f.pickup(deployBot, a.ID)
	if err != nil || res.Lease.Tier != "critical" {
		t.Fatalf("pickup = %+v, %v", res, err)
	}
}

func TestApproval_ReviewRefused(t *testing.T) {
	tests := []struct {
		name     string
		approver string
		admin    bool // via the admin socket
		reason   string
		code     string
		says     string
		audited  string // the violation's reason code, "" when not a violation
	}{
		{name: "ErrOwner", approver: bob, code: broker.EFORBIDDEN, says: "owns agent", audited: "owner_approval"},
		{name: "ErrRequestingAgent", approver: deployBot, code: broker.EFORBIDDEN, says: "its own request", audited: "self_approval"},
		{name: "ErrAdminSocket", admin: true, code: broker.EFORBIDDEN, says: "admin socket may never approve", audited: "admin_socket_approval"},
		{name: "ErrAdminSocketByName", approver: broker.AdminSocketActor, code: broker.EFORBIDDEN, says: "admin socket", audited: "admin_socket_approval"},
		{name: "ErrNotApprover", approver: vic, code: broker.EFORBIDDEN, says: "lacks the approver role", audited: "missing_role"},
		{name: "ErrNotOperator", approver: "spiffe://example.org/ops/mallory", code: broker.EFORBIDDEN, says: "is not an operator", audited: "missing_role"},
		{name: "ErrNoReason", approver: alice, reason: "  ", code: broker.EINVALID, says: "reason"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newApprovalFixture(t)
			a := f.request(t, deployBot, "rotate", rotateAlpha)
			reason := "looks fine"
			if tt.reason != "" {
				reason = tt.reason
			}
			_, err := f.svc.Approvals().Review(context.Background(), tt.approver, a.ID, true, reason, tt.admin)
			wantCode(t, err, tt.code, tt.says)
			got, _ := f.svc.Approvals().Get(context.Background(), a.ID)
			if got.Status != broker.ApprovalPending || len(got.Reviews) != 0 {
				t.Fatalf("a refused review changed the approval: %+v", got)
			}
			ev := lastEvent(t, f)
			if tt.audited == "" {
				if ev.Type != broker.EventApprovalRequested {
					t.Fatalf("last event = %+v; an invalid review records nothing", ev)
				}
				return
			}
			if ev.Type != broker.EventViolation || len(ev.Reasons) != 1 || ev.Reasons[0] != tt.audited {
				t.Fatalf("last event = %+v, want a %s violation", ev, tt.audited)
			}
		})
	}
	t.Run("ErrNotFound", func(t *testing.T) {
		f := newApprovalFixture(t)
		_, err := f.svc.Approvals().Review(context.Background(), alice, "01NOSUCHAPPROVAL", true, "ok", false)
		wantCode(t, err, broker.ENOTFOUND, "no approval")
	})
}

func TestApproval_DenyWins(t *testing.T) {
	ctx := context.Background()
	f := newApprovalFixture(t)
	a := f.request(t, deployBot, "drop-db", scratch7)
	f.review(t, alice, a.ID, true)
	a = f.review(t, carol, a.ID, false)
	if a.Status != broker.ApprovalDenied || len(a.Reviews) != 2 {
		t.Fatalf("after an approve and a deny: %+v", a)
	}
	if ev := lastEvent(t, f); ev.Type != broker.EventApprovalDenied || ev.Actor != carol || ev.Details["reason"] == "" {
		t.Fatalf("last event = %+v, want approval_denied by carol", ev)
	}
	_, err := f.svc.Approvals().Review(ctx, dave, a.ID, true, "overrule", false)
	wantCode(t, err, broker.ECONFLICT, "denied")
	_, err = f.pickup(deployBot, a.ID)
	wantCode(t, err, broker.EFORBIDDEN, "denied")
	if f.backend.Mints.Load() != 0 {
		t.Fatal("a denied approval was minted")
	}
}

func TestApproval_AdminSocketMayDeny(t *testing.T) {
	f := newApprovalFixture(t)
	a := f.request(t, deployBot, "rotate", rotateAlpha)
	got, err := f.svc.Approvals().Review(context.Background(), "", a.ID, false, "incident: nothing gets rotated", true)
	if err != nil || got.Status != broker.ApprovalDenied || got.Reviews[0].Approver != broker.AdminSocketActor {
		t.Fatalf("admin socket deny = %+v, %v", got, err)
	}
}

func TestApproval_PickupRefused(t *testing.T) {
	ctx := context.Background()
	t.Run("ErrOtherAgent", func(t *testing.T) {
		f := newApprovalFixture(t)
		a := f.request(t, deployBot, "rotate", rotateAlpha)
		f.review(t, alice, a.ID, true)
		_, err := f.pickup(otherBot, a.ID)
		wantCode(t, err, broker.ENOTFOUND, "no approval")
		if _, err := f.svc.Approvals().ForAgent(ctx, otherBot, a.ID); broker.ErrorCode(err) != broker.ENOTFOUND {
			t.Fatalf("another agent reading the approval: %v, want not found", err)
		}
		if got, _ := f.svc.Approvals().Get(ctx, a.ID); got.Status != broker.ApprovalApproved {
			t.Fatalf("after a foreign pickup the approval is %s", got.Status)
		}
	})
	t.Run("ErrOtherParams", func(t *testing.T) {
		f := newApprovalFixture(t)
		a := f.request(t, deployBot, "rotate", rotateAlpha)
		f.review(t, alice, a.ID, true)
		_, err := f.svc.Issue(ctx, broker.IssueRequest{Agent: deployBot, Task: "rotate", Params: map[string]string{"key": "beta"}, ApprovalID: a.ID})
		wantCode(t, err, broker.ECONFLICT, "parameters differ")
		if ev := lastEvent(t, f); ev.Type != broker.EventViolation || ev.Reasons[0] != "approval_mismatch" {
			t.Fatalf("last event = %+v, want an approval_mismatch violation", ev)
		}
		_, err = f.svc.Issue(ctx, broker.IssueRequest{Agent: deployBot, Task: "drop-db", Params: scratch7, ApprovalID: a.ID})
		wantCode(t, err, broker.ECONFLICT, "is for task rotate")
		// Restating what was approved is fine.
		if _, err := f.svc.Issue(ctx, broker.IssueRequest{Agent: deployBot, Task: "rotate", Params: rotateAlpha, ApprovalID: a.ID}); err != nil {
			t.Fatalf("pickup restating the approved request: %v", err)
		}
	})
	t.Run("ErrTTLLongerThanApproved", func(t *testing.T) {
		f := newApprovalFixture(t)
		a := f.request(t, deployBot, "rotate", rotateAlpha)
		f.review(t, alice, a.ID, true)
		res, err := f.svc.Issue(ctx, broker.IssueRequest{Agent: deployBot, ApprovalID: a.ID, TTL: 20 * time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		if got := res.Lease.ExpiresAt.Sub(res.Lease.IssuedAt); got != a.TTL {
			t.Fatalf("lease TTL = %s, want the approved %s", got, a.TTL)
		}
	})
	t.Run("ErrGlobalFreeze", func(t *testing.T) {
		f := newApprovalFixture(t)
		a := f.request(t, deployBot, "rotate", rotateAlpha)
		f.review(t, alice, a.ID, true)
		if err := f.svc.Agents().SetFreeze(ctx, carol, true, "incident"); err != nil {
			t.Fatal(err)
		}
		_, err := f.pickup(deployBot, a.ID)
		var e *broker.Error
		if !errors.As(err, &e) || e.Code != broker.EFORBIDDEN || len(e.Reasons) == 0 || e.Reasons[0] != string(templates.ReasonGlobalFreeze) {
			t.Fatalf("pickup during a freeze: %v, want forbidden by the global freeze", err)
		}
		if f.backend.Mints.Load() != 0 {
			t.Fatal("minted during a freeze")
		}
		if got, _ := f.svc.Approvals().Get(ctx, a.ID); got.Status != broker.ApprovalApproved {
			t.Fatalf("a denied pickup used up the approval: %s", got.Status)
		}
		if err := f.svc.Agents().SetFreeze(ctx, dave, false, "over"); err != nil {
			t.Fatal(err)
		}
		if _, err := f.pickup(deployBot, a.ID); err != nil {
			t.Fatalf("pickup after the freeze: %v", err)
		}
	})
	t.Run("ErrAgentPaused", func(t *testing.T) {
		f := newApprovalFixture(t)
		a := f.request(t, deployBot, "rotate", rotateAlpha)
		f.review(t, alice, a.ID, true)
		if err := f.svc.Agents().SetState(ctx, carol, deployBot, broker.AgentPaused, "odd"); err != nil {
			t.Fatal(err)
		}
		_, err := f.pickup(deployBot, a.ID)
		wantCode(t, err, broker.EFORBIDDEN, "paused")
	})
	t.Run("ErrTemplateChanged", func(t *testing.T) {
		f := newApprovalFixture(t)
		a := f.request(t, deployBot, "rotate", rotateAlpha)
		f.review(t, alice, a.ID, true)
		wider := strings.Replace(rotateTemplate, `capabilities = ["update"]`, `capabilities = ["update", "delete"]`, 1)
		if err := f.svc.SetPolicy(ctx, loadApprovalPolicy(t, wider), "reload"); err != nil {
			t.Fatal(err)
		}
		_, err := f.pickup(deployBot, a.ID)
		wantCode(t, err, broker.ECONFLICT, "changed since approval")
		if f.backend.Mints.Load() != 0 {
			t.Fatal("minted a policy nobody approved")
		}
	})
}

// A pickup that fails at the backend leaves the approval approved, and a
// retry — with the same request_id — mints then.
func TestApproval_PickupRetriedAfterBackendOutage(t *testing.T) {
	ctx := context.Background()
	f := newApprovalFixture(t)
	res, err := f.svc.Issue(ctx, broker.IssueRequest{Agent: deployBot, Task: "rotate", Params: rotateAlpha, RequestID: "req-7"})
	if err != nil {
		t.Fatal(err)
	}
	a := f.review(t, alice, res.Pending.ID, true)
	f.backend.SetErrors(errors.Join(errors.New("vault sealed"), broker.ErrBackendUnavailable), nil)
	pick := broker.IssueRequest{Agent: deployBot, ApprovalID: a.ID, RequestID: "req-7"}
	if _, err := f.svc.Issue(ctx, pick); broker.ErrorCode(err) != broker.EUNAVAILABLE {
		t.Fatalf("pickup with the backend down: %v, want unavailable", err)
	}
	if got, _ := f.svc.Approvals().Get(ctx, a.ID); got.Status != broker.ApprovalApproved {
		t.Fatalf("a failed pickup used up the approval: %s", got.Status)
	}
	f.backend.SetErrors(nil, nil)
	got, err := f.svc.Issue(ctx, pick)
	if err != nil || got.Replayed || got.Secret.IsZero() {
		t.Fatalf("retried pickup = %+v, %v; want a fresh lease and secret", got, err)
	}
}

func TestApproval_ConcurrentPickupsMintOnce(t *testing.T) {
	f := newApprovalFixture(t)
	a := f.request(t, deployBot, "rotate", rotateAlpha)
	f.review(t, alice, a.ID, true)
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, conflicts := 0, 0
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := f.pickup(deployBot, a.ID)
			mu.Lock()
			defer mu.Unlock()
			switch broker.ErrorCode(err) {
			case "":
				ok++
			case broker.ECONFLICT:
				conflicts++
			default:
				t.Errorf("pickup: %v", err)
			}
		}()
	}
	wg.Wait()
	if ok != 1 || conflicts != 7 || f.backend.Mints.Load() != 1 {
		t.Fatalf("%d pickups succeeded, %d conflicted, %d mints; want 1, 7, 1", ok, conflicts, f.backend.Mints.Load())
	}
}

func TestApproval_Expiry(t *testing.T) {
	ctx := context.Background()
	t.Run("Pending", func(t *testing.T) {
		f := newApprovalFixture(t)
		a := f.request(t, deployBot, "rotate", rotateAlpha)
		f.clock.Add(59 * time.Minute)
		if n, err := f.svc.Leases().Sweep(ctx); n != 0 || err != nil {
			t.Fatalf("Sweep before the deadline = %d, %v", n, err)
		}
		f.clock.Add(time.Minute + time.Second)
		if n, err := f.svc.Leases().Sweep(ctx); n != 1 || err != nil {
			t.Fatalf("Sweep past the deadline = %d, %v; want 1", n, err)
		}
		got, _ := f.svc.Approvals().Get(ctx, a.ID)
		if got.Status != broker.ApprovalExpired || got.DecidedAt.IsZero() {
			t.Fatalf("approval after its deadline: %+v", got)
		}
		ev := lastEvent(t, f)
		if ev.Type != broker.EventApprovalExpired || ev.Details["approval_id"] != a.ID || ev.Details["was"] != "pending" || ev.Subject != deployBot {
			t.Fatalf("last event = %+v, want approval_expired of a pending approval", ev)
		}
		_, err := f.svc.Approvals().Review(ctx, alice, a.ID, true, "late", false)
		wantCode(t, err, broker.ECONFLICT, "expired")
		if n, _ := f.svc.Leases().Sweep(ctx); n != 0 {
			t.Fatalf("an expired approval was swept again (%d)", n)
		}
	})
	t.Run("ApprovedNotPickedUp", func(t *testing.T) {
		f := newApprovalFixture(t)
		a := f.request(t, deployBot, "rotate", rotateAlpha)
		f.clock.Add(50 * time.Minute)
		f.review(t, alice, a.ID, true)
		// The pickup window runs from the approval, past the review
		// deadline.
		f.clock.Add(14 * time.Minute)
		if n, _ := f.svc.Leases().Sweep(ctx); n != 0 {
			t.Fatalf("swept %d within the pickup time", n)
		}
		f.clock.Add(time.Minute + time.Second)
		if n, err := f.svc.Leases().Sweep(ctx); n != 1 || err != nil {
			t.Fatalf("Sweep past the pickup time = %d, %v; want 1", n, err)
		}
		if ev := lastEvent(t, f); ev.Type != broker.EventApprovalExpired || ev.Details["was"] != "approved" {
			t.Fatalf("last event = %+v, want approval_expired of an approved approval", ev)
		}
		_, err := f.pickup(deployBot, a.ID)
		wantCode(t, err, broker.ECONFLICT, "expired")
		if f.backend.Mints.Load() != 0 {
			t.Fatal("an expired approval was minted")
		}
	})
	t.Run("BeforeTheSweeperGetsThere", func(t *testing.T) {
		f := newApprovalFixture(t)
		a := f.request(t, deployBot, "rotate", rotateAlpha)
		f.review(t, alice, a.ID, true)
		f.clock.Add(16 * time.Minute)
		_, err := f.pickup(deployBot, a.ID)
		wantCode(t, err, broker.ECONFLICT, "expired")
		if evs := eventsOf(t, f, broker.EventApprovalExpired); len(evs) != 1 {
			t.Fatalf("%d approval_expired events, want 1", len(evs))
		}
	})
}

func TestApproval_Wait(t *testing.T) {
	ctx := context.Background()
	f := newApprovalFixture(t)
	a := f.request(t, deployBot, "rotate", rotateAlpha)
	if got, err := f.svc.Approvals().Wait(ctx, a.ID, 0); err != nil || got.Status != broker.ApprovalPending {
		t.Fatalf("WaitApproval(0) = %+v, %v", got, err)
	}
	start := time.Now()
	if got, err := f.svc.Approvals().Wait(ctx, a.ID, 50*time.Millisecond); err != nil || got.Status != broker.ApprovalPending || time.Since(start) < 50*time.Millisecond {
		t.Fatalf("WaitApproval timed out with %+v, %v after %s", got, err, time.Since(start))
	}

	type result struct {
		a   *broker.Approval
		err error
	}
	done := make(chan result, 1)
	go func() {
		got, err := f.svc.Approvals().Wait(ctx, a.ID, time.Minute)
		done <- result{got, err}
	}()
	time.Sleep(20 * time.Millisecond) // let the waiter park; it must not miss a change either way
	f.review(t, alice, a.ID, true)
	select {
	case r := <-done:
		if r.err != nil || r.a.Status != broker.ApprovalApproved {
			t.Fatalf("WaitApproval = %+v, %v; want approved", r.a, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WaitApproval did not return when the approval was decided")
	}

	cctx, cancel := context.WithCancel(ctx)
	b := f.request(t, deployBot, "drop-db", scratch7)
	go func() { time.Sleep(20 * time.Millisecond); cancel() }()
	if _, err := f.svc.Approvals().Wait(cctx, b.ID, time.Minute); !errors.Is(err, context.Canceled) {
		t.Fatalf("WaitApproval after cancel: %v", err)
	}
	if _, err := f.svc.Approvals().Wait(ctx, "01NOSUCHAPPROVAL", time.Second); broker.ErrorCode(err) != broker.ENOTFOUND {
		t.Fatalf("WaitApproval of nothing: %v", err)
	}
}

func TestApproval_List(t *testing.T) {
	ctx := context.Background()
	f := newApprovalFixture(t)
	a := f.request(t, deployBot, "rotate", rotateAlpha)
	b := f.request(t, deployBot, "drop-db", scratch7)
	c := f.request(t, otherBot, "rotate", rotateAlpha)
	f.review(t, alice, a.ID, true)
	tests := []struct {
		f    broker.ApprovalFilter
		want []string
	}{
		{broker.ApprovalFilter{}, []string{c.ID, b.ID, a.ID}},
		{broker.ApprovalFilter{Status: broker.ApprovalPending}, []string{c.ID, b.ID}},
		{broker.ApprovalFilter{Status: broker.ApprovalApproved}, []string{a.ID}},
		{broker.ApprovalFilter{Agent: deployBot}, []string{b.ID, a.ID}},
		{broker.ApprovalFilter{Agent: deployBot, Status: broker.ApprovalPending}, []string{b.ID}},
		{broker.ApprovalFilter{Limit: 1}, []string{c.ID}},
	}
	for _, tt := range tests {
		got, err := f.svc.Approvals().List(ctx, tt.f)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, a := range got {
			ids = append(ids, a.ID)
		}
		if strings.Join(ids, ",") != strings.Join(tt.want, ",") {
			t.Errorf("Approvals(%+v) = %v, want %v", tt.f, ids, tt.want)
		}
	}
}

// Invariant 1 across the approval flow: the secret minted at pickup is in
// neither the approval, nor the lease, nor the audit log.
func TestApproval_SecretNeverStored(t *testing.T) {
	ctx := context.Background()
	f := newApprovalFixture(t)
	a := f.request(t, deployBot, "drop-db", scratch7)
	f.review(t, alice, a.ID, true)
	f.review(t, carol, a.ID, true)
	res, err := f.pickup(deployBot, a.ID)
	if err != nil || res.Secret.Reveal()["password"] != canary {
		t.Fatalf("pickup = %+v, %v", res, err)
	}
	f.pickup(deployBot, a.ID) // refused: must not leave anything either
	f.svc.Leases().Revoke(ctx, carol, "done", broker.RevokeSelector{All: true})
	f.svc.Leases().ProcessRevocations(ctx)
	f.events(t)
	db, err := os.ReadFile(f.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(db, []byte(canary)) {
		t.Fatal("the secret was written to the bbolt file")
	}
	if !bytes.Contains(db, []byte(a.ID)) || !bytes.Contains(db, []byte("database/drop/scratch-7")) {
		t.Fatal("the canary scan read the wrong file: the approval is not in it either")
	}
}
