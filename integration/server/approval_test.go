package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker/api"
	"github.com/latchbroker/latch/broker/client"
	"github.com/latchbroker/latch/integration/vaultenv"
	"github.com/latchbroker/latch/notify"
)

// Approvers: dave and erin, and bob, who owns the agents below.
const (
	dave  = "spiffe://example.org/ops/dave"
	erin  = "spiffe://example.org/ops/erin"
	owner = "spiffe://example.org/ops/bob"

	hitlPrefix = "spiffe://example.org/hitl/"

	approvalOperators = `  - { id: ` + dave + `, roles: [approver] }
  - { id: ` + erin + `, roles: [approver] }
  - { id: ` + owner + `, roles: [approver] }
`
	approvalAgents = `  - id: ` + hitlPrefix + `*
    owner: ` + owner + `
    templates: [ticket-high, ticket-critical]
`
)

// approvalTemplates read one KV ticket at risk high and critical.
var approvalTemplates = map[string]string{
	"ticket-high.yaml": `name: ticket-high
description: Read one ticket; a person approves.
backend: tokens
params:
  ticket: { pattern: "^[0-9]{1,9}$" }
policy: |
  path "secret/data/tickets/{{ .params.ticket }}" { capabilities = ["read"] }
ttl: 5m
risk: high
`,
	"ticket-critical.yaml": `name: ticket-critical
description: Read one ticket; two people approve.
backend: tokens
params:
  ticket: { pattern: "^[0-9]{1,9}$" }
policy: |
  path "secret/data/tickets/{{ .params.ticket }}" { capabilities = ["read"] }
ttl: 5m
risk: critical
`,
}

// webhookReceiver records the deliveries whose signature verifies; any
// other delivery fails the test.
type webhookReceiver struct {
	t      testing.TB
	secret []byte
	srv    *httptest.Server

	// down makes it answer 503 to every delivery, counted in refused.
	down    atomic.Bool
	refused atomic.Int64

	mu       sync.Mutex
	payloads []notify.Payload
}

func newWebhookReceiver(t testing.TB) *webhookReceiver {
	w := &webhookReceiver{t: t, secret: []byte("webhook-secret-for-tests")}
	w.srv = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if w.down.Load() {
			w.refused.Add(1)
			http.Error(rw, "down for the test", http.StatusServiceUnavailable)
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(rw, err.Error(), http.StatusBadRequest)
			return
		}
		if err := notify.Verify(w.secret, r.Header.Get("X-Latch-Timestamp"), r.Header.Get("X-Latch-Signature"), body, time.Now(), 5*time.Minute); err != nil {
			t.Errorf("webhook delivery does not verify: %v\n%s", err, body)
			http.Error(rw, err.Error(), http.StatusUnauthorized)
			return
		}
		var p notify.Payload
		if err := json.Unmarshal(body, &p); err != nil {
			t.Errorf("webhook delivery: %v\n%s", err, body)
			http.Error(rw, err.Error(), http.StatusBadRequest)
			return
		}
		w.mu.Lock()
		w.payloads = append(w.payloads, p)
		w.mu.Unlock()
	}))
	t.Cleanup(w.srv.Close)
	return w
}

// notifyYAML is the notify: block delivering the approval events to w.
func (w *webhookReceiver) notifyYAML(t testing.TB) string {
	return w.notifyYAMLFor(t, "[approval_requested, approval_approved, approval_denied, approval_expired]")
}

// notifyYAMLFor is the notify: block delivering events (a YAML list, or
// "" for the default events) to w.
func (w *webhookReceiver) notifyYAMLFor(t testing.TB, events string) string {
	path := filepath.Join(t.TempDir(), "webhook.key")
	writeFile(t, path, w.secret)
	if events != "" {
		events = ", events: " + events
	}
	return fmt.Sprintf("notify:\n  webhooks:\n    - { url: %q, secret_file: %q%s }\n", w.srv.URL, path, events)
}

// await waits for a verified delivery of type typ about approval id.
func (w *webhookReceiver) await(typ, id string) notify.Payload {
	w.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		w.mu.Lock()
		for _, p := range w.payloads {
			if p.Type == typ && p.Details["approval_id"] == id {
				w.mu.Unlock()
				return p
			}
		}
		w.mu.Unlock()
		if time.Now().After(deadline) {
			w.t.Fatalf("no signed %s delivery for approval %s within 30s", typ, id)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// first waits for the first delivery of type typ.
func (w *webhookReceiver) first(typ string) notify.Payload {
	w.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		w.mu.Lock()
		for _, p := range w.payloads {
			if p.Type == typ {
				w.mu.Unlock()
				return p
			}
		}
		w.mu.Unlock()
		if time.Now().After(deadline) {
			w.t.Fatalf("no signed %s delivery within 30s", typ)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startApprovalLatch starts a server with the approvers, the hitl agents
// and their templates, webhooks to a receiver, and extra top-level
// config blocks.
func startApprovalLatch(t *testing.T, extra string) (*latch, *webhookReceiver) {
	hook := newWebhookReceiver(t)
	l := startLatchWith(t, latchOptions{
		Operators: approvalOperators,
		Agents:    approvalAgents,
		Templates: approvalTemplates,
		Notify:    hook.notifyYAML(t),
		Extra:     extra,
	})
	return l, hook
}

// readsTicket checks that token reads tickets/n and not its sibling.
func readsTicket(ctx context.Context, t testing.TB, token, n, sibling string) {
	t.Helper()
	vc, err := setup(t).ClientWithToken(token)
	if err != nil {
		t.Fatal(err)
	}
	s, err := vc.KVv2("secret").Get(ctx, "tickets/"+n)
	if err != nil || s.Data["body"] != "ticket "+n {
		t.Fatalf("read tickets/%s = %v, %v", n, s, err)
	}
	if _, err := vc.KVv2("secret").Get(ctx, "tickets/"+sibling); vaultenv.StatusOf(err) != http.StatusForbidden {
		t.Fatalf("read tickets/%s = %v, want 403", sibling, err)
	}
}

// TestServer_ApprovalHighRisk is the high-risk flow through the CLI:
// the agent waits in `latch fetch --wait`, an approver approves with
// `latch approval approve`, the fetch returns a working secret once.
func TestServer_ApprovalHighRisk(t *testing.T) {
	l, hook := startApprovalLatch(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	agent := hitlPrefix + "incident-bot"
	agentFiles := l.svidFiles(agent)

	// The live stream, from before the request.
	events, err := l.client(viewer).Events(ctx, api.EventsQuery{})
	if err != nil {
		t.Fatal(err)
	}
	var (
		evMu sync.Mutex
		seen []api.Event
	)
	evDone := make(chan struct{})
	go func() {
		defer close(evDone)
		for {
			ev, err := events.Next()
			if err != nil {
				return
			}
			evMu.Lock()
			seen = append(seen, ev)
			evMu.Unlock()
		}
	}()
	t.Cleanup(func() { events.Close(); <-evDone })

	args := append([]string{"fetch", "--task", "ticket-high", "--param", "ticket=42", "--reason", "incident 7: read the ticket",
		"--wait", "60s", "-o", "json"}, agentFiles...)
	fetchCmd, fetchOut, fetchErr := l.command(ctx, nil, args...)
	if err := fetchCmd.Start(); err != nil {
		t.Fatal(err)
	}
	fetchDone := make(chan error, 1)
	go func() { fetchDone <- fetchCmd.Wait() }()

	requested := hook.first("approval_requested")
	id := requested.Details["approval_id"]
	if id == "" || requested.Actor != agent || requested.Task != "ticket-high" {
		t.Fatalf("approval_requested delivery = %+v", requested)
	}
	// The CLI got the 202 and is waiting.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(fetchErr.String(), "approval required: "+id) {
		if time.Now().After(deadline) {
			t.Fatalf("latch fetch --wait did not report approval %s:\n%s", id, fetchErr.String())
		}
		time.Sleep(100 * time.Millisecond)
	}

	show := l.cli(ctx, nil, append([]string{"approval", "show", id, "-o", "json"}, l.svidFiles(dave)...)...)
	if show.code != 0 || !strings.Contains(show.stdout, "tickets/42") || !strings.Contains(show.stdout, "incident 7") {
		t.Fatalf("latch approval show %s (want the rendered policy and the reason): %s", id, show)
	}
	r := l.cli(ctx, nil, append([]string{"approval", "approve", id, "--reason", "incident 7 is real"}, l.svidFiles(dave)...)...)
	if r.code != 0 {
		t.Fatalf("latch approval approve: %s", r)
	}

	select {
	case err := <-fetchDone:
		if err != nil {
			t.Fatalf("latch fetch --wait: %v\nstdout: %s\nstderr: %s", err, fetchOut.String(), fetchErr.String())
		}
	case <-ctx.Done():
		t.Fatalf("latch fetch --wait did not finish\nstderr: %s", fetchErr.String())
	}
	got := parseFetch(t, cliResult{stdout: fetchOut.String(), stderr: fetchErr.String()})
	if got.Lease.ID == "" || got.Lease.Agent != agent {
		t.Fatalf("picked-up lease = %+v", got.Lease)
	}
	readsTicket(ctx, t, got.Secret["token"], "42", "43")
	if p := hook.await("approval_approved", id); p.Actor != dave {
		t.Fatalf("approval_approved delivery = %+v, want actor %s", p, dave)
	}
	hook.mu.Lock()
	delivered, _ := json.Marshal(hook.payloads)
	hook.mu.Unlock()
	if strings.Contains(string(delivered), got.Secret["token"]) {
		t.Fatal("a webhook delivery carries the picked-up secret")
	}

	again := l.cli(ctx, nil, append([]string{"fetch", "--task", "ticket-high", "--param", "ticket=42", "--reason", "incident 7: again",
		"--approval-id", id, "-o", "json"}, agentFiles...)...)
	if again.code == 0 || !strings.Contains(again.stderr, "already used") || strings.Contains(again.stdout, `"secret"`) {
		t.Fatalf("second pickup of %s: %s; want it refused as already used", id, again)
	}

	// The stream saw the flow in order.
	want := []string{"approval_requested", "approval_approved", "issue"}
	deadline = time.Now().Add(10 * time.Second)
	for {
		evMu.Lock()
		var types []string
		for _, ev := range seen {
			if ev.Details["approval_id"] == id || (ev.Lease != "" && ev.Lease == got.Lease.ID) {
				types = append(types, ev.Type)
			}
		}
		evMu.Unlock()
		if isSubsequence(want, types) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("event stream for approval %s: %v, want %v in this order", id, types, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// isSubsequence reports whether want appears in got in order.
func isSubsequence(want, got []string) bool {
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	return i == len(want)
}

// TestServer_ApprovalCritical checks the review rules of the critical
// tier: two distinct approvers, and who may never approve.
func TestServer_ApprovalCritical(t *testing.T) {
	l, _ := startApprovalLatch(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	agent := hitlPrefix + "critical-bot"
	agentHTTP := l.tlsClient(agent)
	agentClient := l.client(agent)
	daveFiles, erinFiles, ownerFiles := l.svidFiles(dave), l.svidFiles(erin), l.svidFiles(owner)
	params := map[string]string{"ticket": "43"}

	// request asks over HTTP and checks the 202.
	request := func(t *testing.T) string {
		t.Helper()
		status, body := post(t, agentHTTP, l.api+"/v1/credentials",
			[]byte(`{"task":"ticket-critical","params":{"ticket":"43"},"reason":"rotate the ticket"}`), nil)
		if status != http.StatusAccepted {
			t.Fatalf("POST /v1/credentials = %d %s, want 202", status, body)
		}
		var res api.CredentialsResponse
		if err := json.Unmarshal([]byte(body), &res); err != nil || res.Approval == nil || res.Approval.ID == "" {
			t.Fatalf("202 body %s: %v", body, err)
		}
		if res.Approval.Required != 2 || res.Approval.Tier != "critical" || len(res.Secret) != 0 {
			t.Fatalf("approval = %+v, want tier critical needing 2 and no secret", res.Approval)
		}
		return res.Approval.ID
	}
	review := func(t *testing.T, verb, id string, conn []string) cliResult {
		t.Helper()
		return l.cli(ctx, nil, append([]string{"approval", verb, id, "--reason", "reviewed in the test"}, conn...)...)
	}
	status := func(t *testing.T, id string) *api.Approval {
		t.Helper()
		a, err := l.client(dave).Approval(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	pickup := func(id string) (*api.CredentialsResponse, error) {
		return agentClient.Credentials(ctx, api.CredentialsRequest{Task: "ticket-critical", Params: params, Reason: "rotate the ticket", ApprovalID: id})
	}

	t.Run("TwoDistinctApprovers", func(t *testing.T) {
		id := request(t)
		if r := review(t, "approve", id, daveFiles); r.code != 0 {
			t.Fatalf("first approval: %s", r)
		}
		for _, tc := range []struct {
			name string
			conn []string
			code int
			msg  string
		}{
			{"SameApproverTwice", daveFiles, 1, "409 conflict: " + dave + " has already reviewed"},
			{"Owner", ownerFiles, 3, "403 forbidden: " + owner + " owns agent " + agent},
			{"AdminSocket", []string{"--admin-socket", l.socket}, 3, "403 forbidden: the admin socket may never approve"},
		} {
			if r := review(t, "approve", id, tc.conn); r.code != tc.code || !strings.Contains(r.stderr, tc.msg) {
				t.Errorf("%s approves: %s; want exit %d and %q", tc.name, r, tc.code, tc.msg)
			}
		}
		if a := status(t, id); a.Status != "pending" || len(a.Reviews) != 1 || a.Reviews[0].Approver != dave {
			t.Fatalf("after one approver and three refused ones: %s with %v", a.Status, a.Reviews)
		}
		if _, err := pickup(id); err == nil {
			t.Fatal("pickup with one of two approvals succeeded")
		} else if e, ok := errors.AsType[*client.Error](err); !ok || e.Code != api.CodeConflict {
			t.Fatalf("pickup with one of two approvals: %v, want a conflict", err)
		}
		if r := review(t, "approve", id, erinFiles); r.code != 0 {
			t.Fatalf("second approval: %s", r)
		}
		if a := status(t, id); a.Status != "approved" {
			t.Fatalf("after two approvers: %s", a.Status)
		}
		res, err := pickup(id)
		if err != nil {
			t.Fatal(err)
		}
		readsTicket(ctx, t, res.Secret["token"], "43", "42")
	})
	t.Run("WaitEndsPending", func(t *testing.T) {
		r := l.cli(ctx, nil, append([]string{"fetch", "--task", "ticket-critical", "--param", "ticket=43", "--reason", "nobody will answer",
			"--wait", "2s", "-o", "json"}, l.svidFiles(agent)...)...)
		if r.code != 4 || !strings.Contains(r.stderr, "still pending") {
			t.Fatalf("latch fetch --wait 2s without reviews: %s; want exit 4, still pending", r)
		}
		if out := parseFetch(t, r); out.Approval == nil || out.Approval.ID == "" || len(out.Secret) != 0 {
			t.Fatalf("latch fetch -o json while pending: %s", r.stdout)
		}
	})
	t.Run("DenyAfterApproveDenies", func(t *testing.T) {
		id := request(t)
		if r := review(t, "approve", id, daveFiles); r.code != 0 {
			t.Fatalf("approval: %s", r)
		}
		if r := review(t, "deny", id, erinFiles); r.code != 0 {
			t.Fatalf("denial: %s", r)
		}
		if a := status(t, id); a.Status != "denied" {
			t.Fatalf("after an approve and a deny: %s", a.Status)
		}
		if res, err := pickup(id); err == nil {
			t.Fatalf("pickup of a denied request: %+v", res.Lease)
		}
	})
}
