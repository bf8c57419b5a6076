package notify_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/boltstore"
	"github.com/latchbroker/latch/notify"
	"github.com/latchbroker/latch/templates"
)

const canary = "CANARY-n0t1fy-s3cr3t-5e1d"

type mintCanary struct{}

func (mintCanary) Mint(_ context.Context, req broker.MintRequest) (broker.Minted, error) {
	return broker.Minted{Secret: broker.NewSecret(map[string]string{"password": canary}),
		Refs: broker.Refs{TokenAccessor: "acc-" + req.LeaseID}, ExpiresAt: time.Now().Add(time.Hour)}, nil
}
func (mintCanary) Revoke(context.Context, broker.Refs) error         { return nil }
func (mintCanary) Lookup(context.Context, broker.Refs) (bool, error) { return true, nil }

const servicePolicy = `
operators:
  - { id: spiffe://example.org/ops/abe, roles: [approver] }
agents:
  - id: spiffe://example.org/agent/ticket-bot
    owner: spiffe://example.org/ops/bob
    templates: [ticket, report]
`

var serviceTemplates = map[string]string{
	"report.yaml": `
name: report
description: Low risk.
backend: fake
params:
  region: { enum: [eu, us] }
ttl: 10m
max_ttl: 30m
risk: low
`,
	"ticket.yaml": `
name: ticket
description: Needs approval.
backend: fake
params:
  ticket: { pattern: "^[0-9]{1,9}$" }
ttl: 5m
max_ttl: 5m
risk: high
`,
}

func newService(t *testing.T) *broker.Service {
	t.Helper()
	pc, err := templates.ParsePolicy("policy.yaml", []byte(servicePolicy))
	if err != nil {
		t.Fatal(err)
	}
	src := templates.Source{Policy: pc, Backends: map[string]templates.Backend{"fake": {Type: "fake"}}}
	for name, body := range serviceTemplates {
		src.Templates = append(src.Templates, templates.File{Name: name, Data: []byte(body)})
	}
	p, err := templates.Load(src)
	if err != nil {
		t.Fatal(err)
	}
	bs, err := boltstore.Open(filepath.Join(t.TempDir(), "latch.db"), boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bs.Close() })
	svc, err := broker.NewService(context.Background(), broker.Config{
		Store: bs, Policy: p, Backends: map[string]broker.Backend{"fake": mintCanary{}},
		Logger: slog.New(slog.DiscardHandler), AuditTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// following is the Service's Audit, as a notify.Source, that tells when
// it is first followed: Run has then taken its starting point, and every
// event written after reaches it.
type following struct {
	broker.Audit
	once    sync.Once
	started chan struct{}
}

func newFollowing(svc *broker.Service) *following {
	return &following{Audit: svc.Audit(), started: make(chan struct{})}
}

func (f *following) Follow(ctx context.Context, after uint64, filter broker.EventFilter, fn func([]broker.Event) error) error {
	f.once.Do(func() { close(f.started) })
	return f.Audit.Follow(ctx, after, filter, fn)
}

func (f *following) wait(t *testing.T) {
	t.Helper()
	select {
	case <-f.started:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not follow the events within 10s")
	}
}

// heldReceiver is a webhook receiver that holds every request until
// released, then checks its signature and records it.
type heldReceiver struct {
	srv     *httptest.Server
	release func()
	got     chan string // the event type of each delivery
	mu      sync.Mutex
	bodies  [][]byte
}

func newHeldReceiver(t *testing.T) *heldReceiver {
	hang := make(chan struct{})
	r := &heldReceiver{release: sync.OnceFunc(func() { close(hang) }), got: make(chan string, 64)}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		select {
		case <-hang:
		case <-req.Context().Done():
			return
		}
		b, _ := io.ReadAll(req.Body)
		if err := notify.Verify(secret, req.Header.Get(notify.HeaderTimestamp), req.Header.Get(notify.HeaderSignature), b, time.Now(), time.Minute); err != nil {
			t.Errorf("delivery does not verify: %v", err)
		}
		r.mu.Lock()
		r.bodies = append(r.bodies, b)
		r.mu.Unlock()
		r.got <- req.Header.Get(notify.HeaderEvent)
	}))
	t.Cleanup(r.srv.Close)
	t.Cleanup(r.release) // runs first: lets srv.Close finish
	return r
}

// runNotifier runs n over svc and returns once it follows svc's events:
// every event written after reaches it. stop ends it and closes n; it is
// called at cleanup too.
func runNotifier(t *testing.T, n *notify.Notifier, svc *broker.Service) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	src := newFollowing(svc)
	go func() { done <- n.Run(ctx, src) }()
	stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		n.Close()
	})
	t.Cleanup(stop)
	src.wait(t)
	return stop
}

// TestNotifier_Service: over a real Service, the approval flow reaches a
// webhook as signed events, a receiver that hangs does not slow issuance,
// and no delivery nor the outbox holds the minted secret.
func TestNotifier_Service(t *testing.T) {
	svc := newService(t)
	ctx := context.Background()
	rcv := newHeldReceiver(t)
	outbox := filepath.Join(t.TempDir(), "outbox.db")
	all := []string{"approval_requested", "approval_approved", "approval_denied", "approval_expired", "issue", "violation"}
	n, err := notify.New(notify.Config{OutboxPath: outbox, Poll: 20 * time.Millisecond, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
		Webhooks: []notify.Webhook{{URL: rcv.srv.URL, Secret: secret, Events: all}}})
	if err != nil {
		t.Fatal(err)
	}
	stop := runNotifier(t, n, svc)

	// The receiver hangs: issuance is not held up.
	begin := time.Now()
	for i := range 5 {
		if _, err := svc.Issue(ctx, broker.IssueRequest{Agent: "spiffe://example.org/agent/ticket-bot", Task: "report",
			Params: map[string]string{"region": "eu"}, Reason: "run", RequestID: "r" + string(rune('a'+i))}); err != nil {
			t.Fatal(err)
		}
	}
	res, err := svc.Issue(ctx, broker.IssueRequest{Agent: "spiffe://example.org/agent/ticket-bot", Task: "ticket",
		Params: map[string]string{"ticket": "42"}, Reason: "close it"})
	if err != nil || res.Pending == nil {
		t.Fatalf("issue ticket = %+v, %v", res, err)
	}
	if d := time.Since(begin); d > 2*time.Second {
		t.Fatalf("issuance took %v with a hanging receiver", d)
	}
	if _, err := svc.Approvals().Review(ctx, "spiffe://example.org/ops/abe", res.Pending.ID, true, "ok", false); err != nil {
		t.Fatal(err)
	}
	picked, err := svc.Issue(ctx, broker.IssueRequest{Agent: "spiffe://example.org/agent/ticket-bot", ApprovalID: res.Pending.ID})
	if err != nil || picked.Secret.Reveal()["password"] != canary {
		t.Fatalf("pickup = %+v, %v", picked, err)
	}
	rcv.release()

	var types []string
	deadline := time.After(10 * time.Second)
	for len(types) < 8 { // 5 issues, requested, approved, the pickup's issue
		select {
		case typ := <-rcv.got:
			types = append(types, typ)
		case <-deadline:
			t.Fatalf("deliveries within 10s: %v", types)
		}
	}
	joined := strings.Join(types, ",")
	if !strings.Contains(joined, "approval_requested") || !strings.Contains(joined, "approval_approved") || strings.Count(joined, "issue") != 6 {
		t.Fatalf("delivered %v", types)
	}
	stop()
	noCanary(t, rcv, outbox)
}

// noCanary checks that neither a delivery nor the outbox file holds the
// minted secret.
func noCanary(t *testing.T, rcv *heldReceiver, outbox string) {
	t.Helper()
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	for _, b := range rcv.bodies {
		if bytes.Contains(b, []byte(canary)) {
			t.Fatalf("a delivery holds the secret: %s", b)
		}
	}
	raw, err := os.ReadFile(outbox)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte(canary)) {
		t.Fatal("the outbox holds the secret")
	}
}

// TestAutoPause: repeated denials of one agent pause it, with an audited
// pause event; denials of other kinds and below the threshold do not.
func TestAutoPause(t *testing.T) {
	svc := newService(t)
	ctx := context.Background()
	ap, err := notify.NewAutoPause(notify.AutoPauseConfig{Threshold: 3, Window: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	src := newFollowing(svc)
	go func() { done <- ap.Run(runCtx, src, svc) }()
	defer func() { cancel(); <-done }()
	src.wait(t) // from now on every denial reaches Run
	pauses := make(chan broker.Event, 16)
	followed := make(chan error, 1)
	go func() {
		followed <- svc.Audit().Follow(runCtx, 0, broker.EventFilter{Types: []broker.EventType{broker.EventPause}}, func(evs []broker.Event) error {
			for _, e := range evs {
				pauses <- e
			}
			return nil
		})
	}()
	defer func() { cancel(); <-followed }()

	bad := broker.IssueRequest{Agent: "spiffe://example.org/agent/ticket-bot", Task: "report", Params: map[string]string{"region": "mars"}, Reason: "x"}
	for range 2 {
		if _, err := svc.Issue(ctx, bad); broker.ErrorCode(err) != broker.EFORBIDDEN {
			t.Fatalf("bad params: %v", err)
		}
	}
	// An unregistered caller's denials are not an agent's.
	for range 3 {
		_, _ = svc.Issue(ctx, broker.IssueRequest{Agent: "spiffe://example.org/agent/stranger", Task: "report", Params: map[string]string{"region": "eu"}})
	}
	if _, err := svc.Issue(ctx, bad); broker.ErrorCode(err) != broker.EFORBIDDEN {
		t.Fatalf("bad params: %v", err)
	}
	// AutoPause sees the denials in order and pauses as it goes: a pause
	// below the threshold, or of the stranger, would be the first pause
	// and say so. No wait for silence is needed.
	select {
	case e := <-pauses:
		if e.Actor != notify.AutoPauseActor || e.Subject != "spiffe://example.org/agent/ticket-bot" || !strings.Contains(e.Details["reason"], "3 denials") {
			t.Fatalf("pause event = %+v", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("not paused after 3 denials")
	}
	_, err = svc.Issue(ctx, broker.IssueRequest{Agent: "spiffe://example.org/agent/ticket-bot", Task: "report", Params: map[string]string{"region": "eu"}})
	if broker.ErrorCode(err) != broker.EFORBIDDEN || !strings.Contains(err.Error(), "paused") {
		t.Fatalf("request after the auto-pause: %v", err)
	}
	if _, err := notify.NewAutoPause(notify.AutoPauseConfig{}); err == nil {
		t.Fatal("auto-pause without a threshold")
	}
}

// TestAutoPause_Coalesced: an event that stands for many denials (outcome
// coalesced) counts as that many.
func TestAutoPause_Coalesced(t *testing.T) {
	svc := newService(t)
	ap, err := notify.NewAutoPause(notify.AutoPauseConfig{Threshold: 3, Window: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	src := newSource()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ap.Run(ctx, src, svc) }()
	defer func() { cancel(); <-done }()
	src.followed(t) // Run has taken its start: what is added now reaches it
	agent := "spiffe://example.org/agent/ticket-bot"
	src.add(broker.Event{Type: broker.EventViolation, Actor: agent, Time: time.Now(), Outcome: broker.OutcomeCoalesced,
		Reasons: []string{"param_constraint"}, Details: map[string]string{"count": "40"}})
	// The pause is an audit event: wait for it.
	waitCtx, cancelWait := context.WithTimeout(ctx, 10*time.Second)
	defer cancelWait()
	paused := errors.New("paused")
	err = svc.Audit().Follow(waitCtx, 0, broker.EventFilter{Types: []broker.EventType{broker.EventPause}}, func(evs []broker.Event) error {
		for _, e := range evs {
			if e.Subject == agent && e.Actor == notify.AutoPauseActor {
				return paused
			}
		}
		return nil
	})
	if !errors.Is(err, paused) {
		t.Fatalf("a coalesced event of 40 denials did not pause the agent within 10s: %v", err)
	}
	if r, err := svc.Agents().Get(ctx, agent); err != nil || r.State != broker.AgentPaused {
		t.Fatalf("agent after the pause event: %+v, %v", r, err)
	}
}
