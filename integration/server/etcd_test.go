package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker/api"
	"github.com/latchbroker/latch/broker/client"
	"github.com/latchbroker/latch/integration/vaultenv"
)

// etcdStoreLine is a store: value on the stack's etcd cluster, under a
// prefix of the test's own.
func etcdStoreLine(t *testing.T) string {
	return fmt.Sprintf(`{ etcd: { endpoints: ["%s"], prefix: /latch-it/%d } }`,
		strings.Join(st.Etcd.Endpoints(), `", "`), time.Now().UnixNano())
}

// startReplicas starts n latch servers on one etcd prefix, with the
// approvers, the hitl agents and their templates; all of them serve.
func startReplicas(t *testing.T, n int) []*latch {
	return startReplicasWith(t, n, latchOptions{Store: etcdStoreLine(t)})
}

// startReplicasWith is startReplicas with o (its Store, Notify...) for
// each.
func startReplicasWith(t *testing.T, n int, o latchOptions) []*latch {
	o.Operators, o.Agents, o.Templates = approvalOperators, approvalAgents, approvalTemplates
	var out []*latch
	for range n {
		out = append(out, startLatchWith(t, o))
	}
	return out
}

// TestServer_ActiveActive: two latch replicas on one etcd prefix, both
// serving. What one does the other sees at once: a pause through A
// refuses the agent on B before anything is minted, a resume through B
// lets it in on A; an approval requested through A and approved through B
// wakes the agent's long poll on A, which then picks it up through A. An
// event stream on B sees every event of both, in chain order, without a
// gap. When A is killed (-9), B takes the duties over and revokes, dead
// in Vault, what A issued.
func TestServer_ActiveActive(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e := setup(t)
	r := startReplicas(t, 2)
	a, b := r[0], r[1]
	stream, from := eventsFromNow(ctx, t, b)

	bot := agentPrefix + "aa-bot"
	issued, err := a.client(bot).Credentials(ctx, api.CredentialsRequest{Task: "close-ticket", Params: map[string]string{"ticket": "7"}, Reason: "on A"})
	if err != nil {
		t.Fatalf("issue through A: %v", err)
	}
	if _, err := b.client(bot).Credentials(ctx, api.CredentialsRequest{Task: "close-ticket", Params: map[string]string{"ticket": "8"}, Reason: "on B"}); err != nil {
		t.Fatalf("issue through B: %v", err)
	}
	pauseAcross(ctx, t, a, b, bot)
	approveAcross(ctx, t, a, b)
	retryAcross(ctx, t, a, b)

	// B's stream: every event so far, A's and B's, in order.
	last := auditSince(t, b, 0)
	for want := from + 1; want <= last[len(last)-1].Seq; want++ {
		ev, err := stream.Next()
		if err != nil {
			t.Fatalf("B's event stream, at %d: %v", want, err)
		}
		if ev.Seq != want {
			t.Fatalf("B's event stream gave seq %d, want %d", ev.Seq, want)
		}
	}

	a.kill9()
	if _, err := b.admin().Revoke(ctx, api.RevokeRequest{Lease: issued.Lease.ID, Reason: "after A's end"}); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	vaultenv.Eventually(t, 45*time.Second, func() error {
		alive, err := e.TokenAlive(ctx, issued.Lease.Refs.TokenAccessor)
		if err != nil || alive {
			return fmt.Errorf("A's lease's token is alive (%v) after its revocation through B", err)
		}
		return nil
	})
	t.Logf("B revoked A's lease in Vault %v after A's kill -9", time.Since(killed).Round(100*time.Millisecond))
	for i, ev := range auditSince(t, b, 0) {
		if ev.Seq != uint64(i+1) {
			t.Fatalf("audit event %d has sequence %d: not one chain", i+1, ev.Seq)
		}
	}
	verifyInEtcd(ctx, t, b)
}

// verifyInEtcd runs latch audit verify on l's etcd store while l serves,
// then edits one record in etcd and expects verify to name it.
func verifyInEtcd(ctx context.Context, t *testing.T, l *latch) {
	t.Helper()
	verifyChain(ctx, t, l)
	cli, err := st.Etcd.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	prefix := storePrefix(t, l)
	key := prefix + "/audit/e/0000000000000003"
	res, err := cli.Get(ctx, key)
	if err != nil || len(res.Kvs) != 1 {
		t.Fatalf("read record 3 from etcd: %v", err)
	}
	var record map[string]any
	if err := json.Unmarshal(res.Kvs[0].Value, &record); err != nil {
		t.Fatal(err)
	}
	record["actor"] = "spiffe://example.org/someone-else"
	edited, _ := json.Marshal(record)
	if _, err := cli.Put(ctx, key, string(edited)); err != nil {
		t.Fatal(err)
	}
	if r := l.cli(ctx, nil, "audit", "verify", "--config", l.config); r.code != 1 || !strings.Contains(r.stdout, "FAILED") || !strings.Contains(r.stdout, "record 3") {
		t.Fatalf("latch audit verify after an edit of record 3 in etcd: %s", r)
	}
}

// eventsFromNow opens an event stream on l after its last event (the
// replicas' config loads), closed with the test, and returns that event's
// sequence number.
func eventsFromNow(ctx context.Context, t *testing.T, l *latch) (*client.EventStream, uint64) {
	t.Helper()
	before := auditSince(t, l, 0)
	from := before[len(before)-1].Seq
	stream, err := l.admin().Events(ctx, api.EventsQuery{After: from})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stream.Close() })
	return stream, from
}

// pauseAcross pauses bot through a and expects b to refuse it before
// minting (a denial, not a credential withheld at commit), then resumes
// it through b and expects a to issue again.
func pauseAcross(ctx context.Context, t *testing.T, a, b *latch, bot string) {
	t.Helper()
	if _, err := a.admin().PauseAgent(ctx, bot, "paused on A"); err != nil {
		t.Fatal(err)
	}
	vaultenv.Eventually(t, 10*time.Second, func() error {
		_, err := b.client(bot).Credentials(ctx, api.CredentialsRequest{Task: "close-ticket", Params: map[string]string{"ticket": "9"}, Reason: "paused?"})
		var ce *client.Error
		if !errors.As(err, &ce) || ce.Status != 403 || !slices.Contains(ce.Reasons, "agent_paused") {
			return fmt.Errorf("B answered a paused agent with %v", err)
		}
		if ce.Message != "" && strings.Contains(ce.Message, "in flight") {
			return fmt.Errorf("B minted for a paused agent and withheld it at commit (%v): it did not know of the pause", err)
		}
		return nil
	})
	if _, err := b.client("spiffe://example.org/ops/ada").ResumeAgent(ctx, bot, "resumed on B"); err != nil {
		t.Fatal(err)
	}
	vaultenv.Eventually(t, 10*time.Second, func() error {
		_, err := a.client(bot).Credentials(ctx, api.CredentialsRequest{Task: "close-ticket", Params: map[string]string{"ticket": "9"}, Reason: "resumed?"})
		return err
	})
}

// approveAcross requests an approval through a, waits for it on a and
// approves it through b: a's long poll returns it approved, and the
// pickup through a gets a working credential.
func approveAcross(ctx context.Context, t *testing.T, a, b *latch) {
	t.Helper()
	agent := hitlPrefix + "aa-deployer"
	req := api.CredentialsRequest{Task: "ticket-high", Params: map[string]string{"ticket": "42"}, Reason: "needs a person"}
	res, err := a.client(agent).Credentials(ctx, req)
	if err != nil || res.Approval == nil {
		t.Fatalf("request through A: %+v, %v; want a pending approval", res, err)
	}
	id := res.Approval.ID
	waited := make(chan *api.Approval, 1)
	go func() {
		ap, err := a.client(agent).WaitApproval(ctx, id, 2*time.Minute)
		if err != nil {
			t.Errorf("wait on A: %v", err)
		}
		waited <- ap
	}()
	if _, err := b.client(dave).Approve(ctx, id, "approved on B"); err != nil {
		t.Fatal(err)
	}
	if ap := <-waited; ap == nil || ap.Status != api.ApprovalApproved {
		t.Fatalf("A's long poll returned %+v, want the approval approved through B", ap)
	}
	req.ApprovalID = id
	picked, err := a.client(agent).Credentials(ctx, req)
	if err != nil || picked.Secret["token"] == "" {
		t.Fatalf("pickup through A: %+v, %v", picked, err)
	}
	readsTicket(ctx, t, picked.Secret["token"], "42", "43")
}

// retryAcross sends each of ten requests through both replicas at once,
// with one request_id: each gets one lease, whichever replica answers.
func retryAcross(ctx context.Context, t *testing.T, a, b *latch) {
	t.Helper()
	bot := agentPrefix + "retry-bot"
	clients := []*client.Client{a.client(bot), b.client(bot)}
	for i := range 10 {
		req := api.CredentialsRequest{Task: "close-ticket", Params: map[string]string{"ticket": "42"}, Reason: "retried", RequestID: fmt.Sprint("twice-", i)}
		var wg sync.WaitGroup
		got := make([]*api.CredentialsResponse, 2)
		errs := make([]error, 2)
		for j, c := range clients {
			wg.Go(func() { got[j], errs[j] = c.Credentials(ctx, req) })
		}
		wg.Wait()
		leases := map[string]bool{}
		for j := range got {
			var ce *client.Error
			switch {
			case errs[j] == nil:
				leases[got[j].Lease.ID] = true
			case errors.As(errs[j], &ce) && ce.Status == 409 && slices.Contains(ce.Reasons, "request_in_flight"):
			default:
				t.Fatalf("request %s through replica %d: %v", req.RequestID, j, errs[j])
			}
		}
		if len(leases) != 1 {
			t.Fatalf("request %s through both replicas got leases %v, want one", req.RequestID, leases)
		}
	}
	res, err := a.admin().Leases(ctx, api.LeaseQuery{Agent: bot, Limit: api.MaxListLimit})
	if err != nil {
		t.Fatal(err)
	}
	delivered := map[string]int{}
	for _, l := range res.Leases {
		if !l.Withheld {
			delivered[l.RequestID]++
		}
	}
	for id, n := range delivered {
		if n != 1 {
			t.Fatalf("request %s delivered %d leases", id, n)
		}
	}
}

// TestServer_EtcdAuditPrune: the chain in etcd is exported, then pruned
// through a record the export holds while the server appends; it still
// verifies, from the record after the anchor; a record deleted after the
// anchor is reported.
func TestServer_EtcdAuditPrune(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l := startReplicas(t, 1)[0]
	bot := l.client(agentPrefix + "prune-bot")
	for i := range 5 {
		if _, err := bot.Credentials(ctx, api.CredentialsRequest{Task: "close-ticket", Params: map[string]string{"ticket": "42"}, Reason: fmt.Sprint("before the prune ", i)}); err != nil {
			t.Fatal(err)
		}
	}
	export := l.cli(ctx, nil, "audit", "export", "--config", l.config)
	if export.code != 0 {
		t.Fatalf("latch audit export: %s", export)
	}
	file := filepath.Join(l.dir, "audit.jsonl")
	if err := os.WriteFile(file, []byte(export.stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(export.stdout), "\n")
	through := len(lines) - 2
	if r := l.cli(ctx, nil, "audit", "prune", "--config", l.config, "--through", fmt.Sprint(len(lines)+1), "--export", file); r.code == 0 || !strings.Contains(r.stderr, "does not hold record") {
		t.Fatalf("prune through a record the export does not hold: %s", r)
	}
	if r := l.cli(ctx, nil, "audit", "prune", "--config", l.config, "--through", fmt.Sprint(through), "--export", file); r.code != 0 || !strings.Contains(r.stdout, fmt.Sprintf("pruned records 1 to %d", through)) {
		t.Fatalf("latch audit prune on etcd: %s", r)
	}
	if _, err := bot.Credentials(ctx, api.CredentialsRequest{Task: "close-ticket", Params: map[string]string{"ticket": "42"}, Reason: "after the prune"}); err != nil {
		t.Fatal(err)
	}
	if r := l.cli(ctx, nil, "audit", "verify", "--config", l.config); r.code != 0 || !strings.Contains(r.stdout, fmt.Sprintf("from record %d", through+1)) {
		t.Fatalf("latch audit verify after the prune: %s", r)
	}
	cli, err := st.Etcd.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Delete(ctx, fmt.Sprintf("%s/audit/e/%016x", storePrefix(t, l), through+1)); err != nil {
		t.Fatal(err)
	}
	if r := l.cli(ctx, nil, "audit", "verify", "--config", l.config); r.code != 1 || !strings.Contains(r.stdout, "FAILED") {
		t.Fatalf("latch audit verify after record %d was deleted: %s", through+1, r)
	}
}

// TestServer_EtcdWebhookFailover: the replica that runs the webhook
// outbox (A) dies with deliveries queued that its receiver refused; the
// replica elected after it (B) sends them, starting where A's outbox had
// everything done.
func TestServer_EtcdWebhookFailover(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	hook := newWebhookReceiver(t)
	store := strings.Replace(etcdStoreLine(t), " } }", " }, outbox: outbox.db }", 1)
	r := startReplicasWith(t, 2, latchOptions{Store: store, Notify: hook.notifyYAML(t)})
	a, b := r[0], r[1]
	hook.down.Store(true)
	agent := b.client(hitlPrefix + "webhook-bot")
	var ids []string
	for i := range 3 {
		res, err := agent.Credentials(ctx, api.CredentialsRequest{Task: "ticket-high", Params: map[string]string{"ticket": "42"}, Reason: fmt.Sprint("while the receiver is down ", i)})
		if err != nil || res.Approval == nil {
			t.Fatalf("request %d: %+v, %v", i, res, err)
		}
		ids = append(ids, res.Approval.ID)
	}
	vaultenv.Eventually(t, 30*time.Second, func() error {
		if hook.refused.Load() < 3 {
			return fmt.Errorf("A tried %d deliveries, want the 3 approval_requested", hook.refused.Load())
		}
		return nil
	})
	a.kill9()
	hook.down.Store(false)
	for _, id := range ids {
		hook.await("approval_requested", id)
	}
}
