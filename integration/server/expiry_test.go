package server

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker/api"
	"github.com/latchbroker/latch/broker/client"
)

// auditEvent waits for the audited event of type typ whose detail key
// is value, read through the admin socket.
func (l *latch) auditEvent(ctx context.Context, typ, key, value string) api.Event {
	l.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := l.admin().Audit(ctx, api.AuditQuery{Types: []string{typ}, Limit: api.MaxListLimit})
		if err != nil {
			l.t.Fatal(err)
		}
		for _, ev := range res.Events {
			if ev.Details[key] == value {
				return ev
			}
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("no audited %s event with %s=%s within 30s", typ, key, value)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestServer_ApprovalExpiry: with approvals.pending_ttl and pickup_ttl
// set, a request nobody reviews expires, and so does an approved request
// nobody picks up; each is audited and notified, and neither can be
// picked up afterwards.
func TestServer_ApprovalExpiry(t *testing.T) {
	l, hook := startApprovalLatch(t, "approvals: { pending_ttl: 2s, pickup_ttl: 2s }\n")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	agent := hitlPrefix + "expiry-bot"
	req := api.CredentialsRequest{Task: "ticket-high", Params: map[string]string{"ticket": "42"}, Reason: "expiry test"}

	// expired checks the audit event and the delivery of an expiry, and
	// that the request can no longer be picked up.
	expired := func(t *testing.T, id, was string) {
		t.Helper()
		ev := l.auditEvent(ctx, "approval_expired", "approval_id", id)
		if ev.Subject != agent || ev.Task != "ticket-high" || ev.Details["was"] != was {
			t.Errorf("audited approval_expired = %+v; want subject %s, task ticket-high, was %s", ev, agent, was)
		}
		if p := hook.await("approval_expired", id); p.Subject != agent || p.Details["was"] != was || p.Seq != ev.Seq {
			t.Errorf("approval_expired delivery = %+v; want the audited event %d (was %s)", p, ev.Seq, was)
		}
		pickup := req
		pickup.ApprovalID = id
		_, err := l.client(agent).Credentials(ctx, pickup)
		if e, ok := errors.AsType[*client.Error](err); !ok || e.Code != api.CodeConflict || !strings.Contains(e.Message, "expired") {
			t.Fatalf("pickup of expired approval %s: %v; want a conflict saying it expired", id, err)
		}
	}

	t.Run("Pending", func(t *testing.T) {
		// The agent waits in latch fetch --wait, longer than the
		// approval lives: the wait ends when it expires, not at --wait.
		start := time.Now()
		r := l.cli(ctx, nil, append([]string{"fetch", "--task", "ticket-high", "--param", "ticket=42", "--reason", "nobody reviews this",
			"--wait", "60s", "-o", "json"}, l.svidFiles(agent)...)...)
		if r.code != 1 || !strings.Contains(r.stderr, "expired") || strings.Contains(r.stdout, `"secret"`) {
			t.Fatalf("latch fetch --wait 60s on a request that expires after 2s: %s; want exit 1 naming the expiry", r)
		}
		if d := time.Since(start); d > 30*time.Second {
			t.Fatalf("latch fetch --wait took %v; the approval expired after 2s", d)
		}
		i := strings.Index(r.stderr, "approval required: ")
		if i < 0 {
			t.Fatalf("latch fetch did not name the approval: %s", r)
		}
		id := strings.Fields(r.stderr[i+len("approval required: "):])[0]
		expired(t, id, "pending")
		if a, err := l.client(dave).Approval(ctx, id); err != nil || a.Status != api.ApprovalExpired {
			t.Fatalf("approval %s after expiry: %+v, %v", id, a, err)
		}
		if _, err := l.client(dave).Approve(ctx, id, "too late"); err == nil {
			t.Fatalf("approving expired approval %s succeeded", id)
		}
	})

	t.Run("Unclaimed", func(t *testing.T) {
		res, err := l.client(agent).Credentials(ctx, req)
		if err != nil || res.Approval == nil {
			t.Fatalf("request: %+v, %v; want a pending approval", res, err)
		}
		id := res.Approval.ID
		a, err := l.client(dave).Approve(ctx, id, "approved, never picked up")
		if err != nil || a.Status != api.ApprovalApproved {
			t.Fatalf("approve: %+v, %v", a, err)
		}
		hook.await("approval_approved", id)
		expired(t, id, "approved")
		if leases, err := l.admin().Leases(ctx, api.LeaseQuery{Agent: agent}); err != nil || len(leases.Leases) != 0 {
			t.Fatalf("leases of %s: %+v, %v; an unclaimed approval mints nothing", agent, leases, err)
		}
	})
}

// TestServer_AutoPause: with auto_pause set, an agent denied three times
// within the window is paused, audited and notified (a webhook with the
// default events), and stays denied until an operator resumes it.
func TestServer_AutoPause(t *testing.T) {
	hook := newWebhookReceiver(t)
	l := startLatchWith(t, latchOptions{
		Notify: hook.notifyYAMLFor(t, ""),
		Extra:  "auto_pause: { denials: 3, window: 1m }\n",
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	agent := agentPrefix + "pause-bot"
	hc := l.tlsClient(agent)
	ask := func(task string) (int, string) {
		return post(t, hc, l.api+"/v1/credentials", []byte(`{"task":"`+task+`","params":{"ticket":"42"},"reason":"auto-pause test"}`), nil)
	}

	// deploy is granted to no agent: each ask is a violation.
	for i := range 3 {
		if status, body := ask("deploy"); status != http.StatusForbidden || !strings.Contains(body, "task_not_granted") {
			t.Fatalf("ask %d for deploy = %d %s; want 403 task_not_granted", i+1, status, body)
		}
	}
	if p := hook.first("violation"); p.Actor != agent {
		t.Fatalf("violation delivery = %+v, want actor %s", p, agent)
	}
	pause := hook.first("pause")
	if pause.Subject != agent || pause.Actor != "latch" || !strings.Contains(pause.Details["reason"], "3 denials") {
		t.Fatalf("pause delivery = %+v; want latch pausing %s after 3 denials", pause, agent)
	}
	ev := l.auditEvent(ctx, "pause", "reason", pause.Details["reason"])
	if ev.Subject != agent || ev.Seq != pause.Seq {
		t.Fatalf("audited pause = %+v; want the delivered event %d", ev, pause.Seq)
	}

	// Paused: even a granted task is denied, until an operator resumes.
	if status, body := ask("close-ticket"); status != http.StatusForbidden || !strings.Contains(body, "agent_paused") {
		t.Fatalf("granted task while paused = %d %s; want 403 agent_paused", status, body)
	}
	agents, err := l.admin().Agents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if i := slices.IndexFunc(agents.Agents, func(a api.Agent) bool { return a.ID == agent }); i < 0 || agents.Agents[i].State != "paused" {
		t.Fatalf("agents = %+v; want %s paused", agents.Agents, agent)
	}
	if r := l.cli(ctx, nil, "agent", "resume", agent, "--reason", "checked the bot", "--admin-socket", l.socket); r.code == 0 {
		t.Fatalf("latch agent resume through the admin socket succeeded: %s", r)
	}
	if r := l.cli(ctx, nil, append([]string{"agent", "resume", agent, "--reason", "checked the bot"}, l.svidFiles(adminOp)...)...); r.code != 0 {
		t.Fatalf("latch agent resume: %s", r)
	}
	if status, body := ask("close-ticket"); status != http.StatusOK {
		t.Fatalf("granted task after resume = %d %s; want 200", status, body)
	}
}
