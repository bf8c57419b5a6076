package server

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker/api"
	"github.com/latchbroker/latch/integration/vaultenv"
)

// TestServer_WebhookOutage: while the webhook receiver is down, requests
// are answered as usual; the deliveries are retried and arrive, signed,
// once it is back.
func TestServer_WebhookOutage(t *testing.T) {
	l, hook := startApprovalLatch(t, "")
	hook.down.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	agent := hitlPrefix + "outage-bot"
	c := l.client(agent)
	req := api.CredentialsRequest{Task: "ticket-high", Params: map[string]string{"ticket": "42"}, Reason: "webhook outage test"}

	start := time.Now()
	res, err := c.Credentials(ctx, req)
	if err != nil || res.Approval == nil {
		t.Fatalf("request while the webhook is down: %+v, %v; want a pending approval", res, err)
	}
	id := res.Approval.ID
	if _, err := l.client(dave).Approve(ctx, id, "outage test"); err != nil {
		t.Fatal(err)
	}
	req.ApprovalID = id
	got, err := c.Credentials(ctx, req)
	if err != nil {
		t.Fatalf("pickup while the webhook is down: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("request, approval and pickup took %v with the webhook down", d)
	}
	readsTicket(ctx, t, got.Secret["token"], "42", "43")

	// At least two attempts failed: the first and a retry.
	deadline := time.Now().Add(30 * time.Second)
	for hook.refused.Load() < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("%d delivery attempts in 30s while down; want retries", hook.refused.Load())
		}
		time.Sleep(100 * time.Millisecond)
	}
	hook.down.Store(false)
	hook.await("approval_requested", id)
	hook.await("approval_approved", id)
}

// TestServer_Alert: a lease issued at the medium tier is issued at once,
// with an alert event in the audit log that reaches a webhook with the
// default events, naming the rule that raised the tier.
func TestServer_Alert(t *testing.T) {
	hook := newWebhookReceiver(t)
	agent := agentPrefix + "alert-bot"
	l := startLatchWith(t, latchOptions{
		Agents: "  - { id: " + agent + ", owner: spiffe://example.org/ops/bob, templates: [close-ticket] }\n",
		Notify: hook.notifyYAMLFor(t, ""),
		Templates: map[string]string{"close-ticket.yaml": strings.Replace(templateFiles["close-ticket.yaml"], "risk: low\n",
			"risk: low\nescalate:\n  - { when: 'params.ticket == \"43\"', to: medium }\n", 1)},
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := l.client(agent)
	fetch(ctx, t, c, "close-ticket", map[string]string{"ticket": "42"}) // low: no alert
	res := fetch(ctx, t, c, "close-ticket", map[string]string{"ticket": "43"})
	p := hook.first("alert")
	if p.Lease != res.Lease.ID || p.Subject != agent || p.Details["tier"] != "medium" || !strings.Contains(p.Details["tier_why"], `params.ticket == "43"`) {
		t.Fatalf("alert delivery = %+v; want lease %s at tier medium, raised by the escalation", p, res.Lease.ID)
	}
	hook.mu.Lock()
	defer hook.mu.Unlock()
	alerts := 0
	for _, d := range hook.payloads {
		if d.Type == "alert" {
			alerts++
		}
	}
	if alerts != 1 {
		t.Fatalf("%d alert deliveries, want 1 (the low-tier lease raises none)", alerts)
	}
}

// TestServer_WebhookReceiverFromREADME: a receiver written from the
// README's words alone — HMAC-SHA256 of timestamp + "." + body, keyed
// with the secret file's contents less one trailing newline — verifies
// every delivery of a key file written by echo SECRET > file.
func TestServer_WebhookReceiverFromREADME(t *testing.T) {
	key := " s3cret from echo " // spaces are the key's: only the newline goes
	var verified, refused atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mac := hmac.New(sha256.New, []byte(key))
		mac.Write([]byte(r.Header.Get("X-Latch-Timestamp") + "." + string(body)))
		want := "sha256=" + hex.EncodeToString(mac.Sum(nil))
		if !hmac.Equal([]byte(want), []byte(r.Header.Get("X-Latch-Signature"))) {
			refused.Add(1)
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		verified.Add(1)
	}))
	t.Cleanup(srv.Close)
	keyFile := filepath.Join(t.TempDir(), "webhook.key")
	writeFile(t, keyFile, []byte(key+"\n")) // what echo leaves
	l := startLatchWith(t, latchOptions{Notify: fmt.Sprintf("notify:\n  webhooks:\n    - { url: %q, secret_file: %q, events: [violation] }\n", srv.URL, keyFile)})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := range 3 {
		// An agent asking for a task it is not granted: a violation each.
		if _, err := l.client(agentPrefix+"hook-bot").Credentials(ctx, api.CredentialsRequest{Task: "deploy", Reason: fmt.Sprint(i)}); err == nil {
			t.Fatal("deploy was granted")
		}
	}
	vaultenv.Eventually(t, 30*time.Second, func() error {
		if n := verified.Load(); n < 3 {
			return fmt.Errorf("%d deliveries verified, %d refused", n, refused.Load())
		}
		return nil
	})
	if n := refused.Load(); n != 0 {
		t.Fatalf("%d deliveries did not verify as the README describes", n)
	}
}
