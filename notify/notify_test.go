package notify_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/notify"
)

// source is an in-memory event log with a live stream, as the Service
// has. publish appends and streams; hide appends without streaming (an
// event dropped for a slow subscriber).
type source struct {
	mu   sync.Mutex
	log  []broker.Event
	subs []chan broker.Event
}

func (s *source) Subscribe(broker.EventFilter) (<-chan broker.Event, func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := make(chan broker.Event, broker.SubscriberBuffer)
	s.subs = append(s.subs, ch)
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			for i, c := range s.subs {
				if c == ch {
					s.subs = append(s.subs[:i], s.subs[i+1:]...)
				}
			}
			close(ch)
		})
	}
}

func (s *source) AuditEvents(_ context.Context, after uint64, fn func(broker.Event) (bool, error)) error {
	s.mu.Lock()
	evs := append([]broker.Event(nil), s.log...)
	s.mu.Unlock()
	for _, e := range evs {
		if e.Seq <= after {
			continue
		}
		if more, err := fn(e); err != nil || !more {
			return err
		}
	}
	return nil
}

func (s *source) LastAuditSeq(context.Context) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return uint64(len(s.log)), nil
}

func (s *source) add(e broker.Event, stream bool) broker.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	e.Seq = uint64(len(s.log) + 1)
	e.Time = time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC).Add(time.Duration(e.Seq) * time.Second)
	e.Hash = "hash-of-" + e.Task
	s.log = append(s.log, e)
	if stream {
		for _, c := range s.subs {
			c <- e
		}
	}
	return e
}

func (s *source) publish(e broker.Event) broker.Event { return s.add(e, true) }
func (s *source) hide(e broker.Event) broker.Event    { return s.add(e, false) }

func (s *source) subscribed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.subs) > 0
}

// delivery is one request the receiver got.
type delivery struct {
	header http.Header
	body   []byte
}

// receiver is an httptest webhook receiver that can be taken down.
type receiver struct {
	srv  *httptest.Server
	down atomic.Bool
	mu   sync.Mutex
	got  []delivery
	hits atomic.Int64
	ch   chan delivery
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{ch: make(chan delivery, 64)}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.hits.Add(1)
		if r.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		b, _ := io.ReadAll(req.Body)
		d := delivery{header: req.Header.Clone(), body: b}
		r.mu.Lock()
		r.got = append(r.got, d)
		r.mu.Unlock()
		r.ch <- d
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) next(t *testing.T) delivery {
	t.Helper()
	select {
	case d := <-r.ch:
		return d
	case <-time.After(10 * time.Second):
		t.Fatal("no delivery within 10s")
		return delivery{}
	}
}

func (r *receiver) none(t *testing.T, within time.Duration) {
	t.Helper()
	select {
	case d := <-r.ch:
		t.Fatalf("unexpected delivery: %s", d.body)
	case <-time.After(within):
	}
}

// start runs a notifier over src until the test ends (or stop is called).
func start(t *testing.T, src *source, cfg notify.Config) (stop func()) {
	t.Helper()
	if cfg.OutboxPath == "" {
		cfg.OutboxPath = filepath.Join(t.TempDir(), "outbox.db")
	}
	if cfg.Poll == 0 {
		cfg.Poll = 20 * time.Millisecond
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff, cfg.MaxBackoff = 10*time.Millisecond, 40*time.Millisecond
	}
	n, err := notify.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx, src) }()
	for !src.subscribed() {
		select {
		case err := <-done:
			t.Fatalf("Run returned before it subscribed: %v", err)
		case <-time.After(time.Millisecond):
		}
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
			if err := n.Close(); err != nil {
				t.Error(err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

var secret = []byte("whsec-9f1c-do-not-leak")

func approvalRequested(task string) broker.Event {
	return broker.Event{Type: broker.EventApprovalRequested, Actor: "spiffe://example.org/agent/ticket-bot", Task: task, Outcome: "pending",
		Details: map[string]string{"approval_id": "01JABCDEFGHJKMNPQRSTVWXYZ0", "required": "1", "expires_at": "2026-03-10T13:00:00Z"}}
}

// TestNotifier_Signed: a delivery is the event as JSON, signed with the
// webhook's secret over timestamp + "." + body, and only the event types
// the webhook asked for are sent.
func TestNotifier_Signed(t *testing.T) {
	src, rcv := &source{}, newReceiver(t)
	now := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	start(t, src, notify.Config{
		Webhooks: []notify.Webhook{{URL: rcv.srv.URL + "/hook", Secret: secret}},
		Now:      func() time.Time { return now },
	})
	src.publish(broker.Event{Type: broker.EventIssue, Actor: "spiffe://example.org/agent/report-bot", Task: "report"}) // not a default event
	e := src.publish(approvalRequested("ticket"))

	d := rcv.next(t)
	ts, sig := d.header.Get(notify.HeaderTimestamp), d.header.Get(notify.HeaderSignature)
	if ts != "1773144000" || !strings.HasPrefix(sig, "sha256=") {
		t.Fatalf("timestamp %q, signature %q", ts, sig)
	}
	if err := notify.Verify(secret, ts, sig, d.body, now.Add(time.Minute), 5*time.Minute); err != nil {
		t.Fatalf("signature does not verify: %v", err)
	}
	if err := notify.Verify([]byte("other"), ts, sig, d.body, now, 5*time.Minute); err == nil {
		t.Fatal("a signature verified with another secret")
	}
	if err := notify.Verify(secret, ts, sig, append(d.body, ' '), now, 5*time.Minute); err == nil {
		t.Fatal("a signature verified over another body")
	}
	if err := notify.Verify(secret, ts, sig, d.body, now.Add(time.Hour), 5*time.Minute); err == nil {
		t.Fatal("an old delivery verified")
	}
	if d.header.Get(notify.HeaderEvent) != "approval_requested" || d.header.Get(notify.HeaderDelivery) == "" ||
		d.header.Get("Content-Type") != "application/json" {
		t.Fatalf("headers = %v", d.header)
	}
	var p notify.Payload
	if err := json.Unmarshal(d.body, &p); err != nil {
		t.Fatal(err)
	}
	if p.Seq != e.Seq || p.Type != "approval_requested" || p.Actor != e.Actor || p.Task != "ticket" ||
		p.Details["approval_id"] != "01JABCDEFGHJKMNPQRSTVWXYZ0" || !strings.Contains(p.Text, "approval requested") {
		t.Fatalf("payload = %+v", p)
	}
	if strings.Contains(string(d.body), string(secret)) || strings.Contains(string(d.body), "hash") {
		t.Fatalf("payload leaks the secret or the chain: %s", d.body)
	}
	rcv.none(t, 100*time.Millisecond) // the issue event was not sent
}

// TestNotifier_Slack: a Slack webhook gets {"text": "..."} only.
func TestNotifier_Slack(t *testing.T) {
	src, rcv := &source{}, newReceiver(t)
	start(t, src, notify.Config{Webhooks: []notify.Webhook{{URL: rcv.srv.URL, Slack: true, Events: []string{"pause"}}}})
	src.publish(approvalRequested("ticket"))
	src.publish(broker.Event{Type: broker.EventPause, Actor: "spiffe://example.org/ops/rex", Subject: "spiffe://example.org/agent/chatty",
		Details: map[string]string{"reason": "too many denials"}})
	d := rcv.next(t)
	var m map[string]any
	if err := json.Unmarshal(d.body, &m); err != nil {
		t.Fatal(err)
	}
	text, _ := m["text"].(string)
	if len(m) != 1 || !strings.Contains(text, "pause") || !strings.Contains(text, "agent/chatty") || !strings.Contains(text, "too many denials") {
		t.Fatalf("slack body = %s", d.body)
	}
	if d.header.Get(notify.HeaderSignature) != "" {
		t.Fatal("signed without a secret")
	}
	rcv.none(t, 100*time.Millisecond)
}

// metrics records what the notifier reports.
type metrics struct {
	mu       sync.Mutex
	results  map[string]int
	maxDepth int
	depth    int
}

func (m *metrics) WebhookDelivery(result string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.results == nil {
		m.results = map[string]int{}
	}
	m.results[result]++
}

func (m *metrics) WebhookOutbox(depth int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.depth, m.maxDepth = depth, max(m.maxDepth, depth)
}

// TestNotifier_Retry: while the receiver is down deliveries are retried
// with backoff; they arrive, once each, when it returns. The metrics see
// the failures, the deliveries and the outbox grow and drain.
func TestNotifier_Retry(t *testing.T) {
	src, rcv, m := &source{}, newReceiver(t), &metrics{}
	rcv.down.Store(true)
	start(t, src, notify.Config{Webhooks: []notify.Webhook{{URL: rcv.srv.URL, Secret: secret}}, Metrics: m})
	src.publish(approvalRequested("a"))
	src.publish(approvalRequested("b"))
	for rcv.hits.Load() < 6 {
		time.Sleep(5 * time.Millisecond)
	}
	rcv.down.Store(false)
	first, second := rcv.next(t), rcv.next(t)
	if !strings.Contains(string(first.body), `"task":"a"`) || !strings.Contains(string(second.body), `"task":"b"`) {
		t.Fatalf("deliveries out of order: %s, %s", first.body, second.body)
	}
	rcv.none(t, 150*time.Millisecond)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.results[notify.ResultFailed] < 5 || m.results[notify.ResultDelivered] != 2 || m.maxDepth != 2 || m.depth != 0 {
		t.Fatalf("metrics: results %v, outbox depth %d (max %d); want the failures, 2 delivered, 2 waiting then none", m.results, m.depth, m.maxDepth)
	}
}

// TestNotifier_HangingReceiver: a receiver that never answers delays only
// its own deliveries, not another webhook's.
func TestNotifier_HangingReceiver(t *testing.T) {
	hang := make(chan struct{})
	stuck := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-hang }))
	t.Cleanup(stuck.Close)
	t.Cleanup(func() { close(hang) }) // runs first: lets stuck.Close finish
	src, rcv := &source{}, newReceiver(t)
	start(t, src, notify.Config{
		Webhooks: []notify.Webhook{{URL: stuck.URL, Secret: secret}, {URL: rcv.srv.URL, Secret: secret}},
		Client:   &http.Client{Timeout: time.Minute},
	})
	begin := time.Now()
	src.publish(approvalRequested("a"))
	src.publish(approvalRequested("b"))
	first, second := rcv.next(t), rcv.next(t)
	if !strings.Contains(string(first.body), `"task":"a"`) || !strings.Contains(string(second.body), `"task":"b"`) {
		t.Fatalf("deliveries out of order: %s, %s", first.body, second.body)
	}
	if d := time.Since(begin); d > 5*time.Second {
		t.Fatalf("the healthy receiver waited %v behind the hanging one", d)
	}
}

// TestNotifier_Durable: deliveries survive a restart in the outbox, and
// events written while the notifier was down are read from the audit log.
func TestNotifier_Durable(t *testing.T) {
	src, rcv := &source{}, newReceiver(t)
	path := filepath.Join(t.TempDir(), "outbox.db")
	rcv.down.Store(true)
	stop := start(t, src, notify.Config{OutboxPath: path, Webhooks: []notify.Webhook{{URL: rcv.srv.URL}}})
	src.publish(approvalRequested("before"))
	for rcv.hits.Load() < 2 {
		time.Sleep(5 * time.Millisecond)
	}
	stop()
	src.hide(approvalRequested("while-down"))
	rcv.down.Store(false)

	start(t, src, notify.Config{OutboxPath: path, Webhooks: []notify.Webhook{{URL: rcv.srv.URL}}})
	got := map[string]bool{}
	for range 2 {
		var p notify.Payload
		if err := json.Unmarshal(rcv.next(t).body, &p); err != nil {
			t.Fatal(err)
		}
		got[p.Task] = true
	}
	if !got["before"] || !got["while-down"] {
		t.Fatalf("delivered %v", got)
	}
	rcv.none(t, 150*time.Millisecond)
}

// TestNotifier_RemovedWebhook: deliveries still in the outbox for a
// webhook taken out of the config are moved to the dead letters at the
// next start, and the remaining webhooks are served.
func TestNotifier_RemovedWebhook(t *testing.T) {
	src, gone, kept := &source{}, newReceiver(t), newReceiver(t)
	path := filepath.Join(t.TempDir(), "outbox.db")
	gone.down.Store(true)
	stop := start(t, src, notify.Config{OutboxPath: path, Webhooks: []notify.Webhook{{URL: gone.srv.URL}}})
	src.publish(approvalRequested("never"))
	for gone.hits.Load() < 2 {
		time.Sleep(5 * time.Millisecond)
	}
	stop()

	stop = start(t, src, notify.Config{OutboxPath: path, Webhooks: []notify.Webhook{{URL: kept.srv.URL}}})
	src.publish(approvalRequested("after"))
	if p := kept.next(t); !strings.Contains(string(p.body), `"task":"after"`) {
		t.Fatalf("delivered %s", p.body)
	}
	stop()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var pending, dead []string // the URLs of the outbox's and dead letters' items
	db.View(func(tx *bolt.Tx) error {
		for name, urls := range map[string]*[]string{"outbox": &pending, "dead": &dead} {
			tx.Bucket([]byte(name)).ForEach(func(_, v []byte) error {
				var it struct{ URL string }
				json.Unmarshal(v, &it)
				*urls = append(*urls, it.URL)
				return nil
			})
		}
		return nil
	})
	if slices.Contains(pending, gone.srv.URL) || !slices.Equal(dead, []string{gone.srv.URL}) {
		t.Fatalf("outbox %v, dead letters %v; want the removed webhook's delivery dead", pending, dead)
	}
}

// TestNotifier_Gap: an event dropped from the live stream is read back
// from the audit log.
func TestNotifier_Gap(t *testing.T) {
	src, rcv := &source{}, newReceiver(t)
	start(t, src, notify.Config{Webhooks: []notify.Webhook{{URL: rcv.srv.URL}}})
	src.hide(approvalRequested("dropped"))
	src.publish(approvalRequested("seen"))
	got := map[string]bool{}
	for range 2 {
		var p notify.Payload
		_ = json.Unmarshal(rcv.next(t).body, &p)
		got[p.Task] = true
	}
	if !got["dropped"] || !got["seen"] {
		t.Fatalf("delivered %v", got)
	}
	rcv.none(t, 100*time.Millisecond)
}

// TestNotifier_FirstStart: a new outbox starts at the end of the audit
// log; the past is not sent.
func TestNotifier_FirstStart(t *testing.T) {
	src, rcv := &source{}, newReceiver(t)
	src.hide(approvalRequested("old"))
	start(t, src, notify.Config{Webhooks: []notify.Webhook{{URL: rcv.srv.URL}}})
	src.publish(approvalRequested("new"))
	if d := rcv.next(t); !strings.Contains(string(d.body), `"task":"new"`) {
		t.Fatalf("delivered %s", d.body)
	}
	rcv.none(t, 100*time.Millisecond)
}

func TestNew_Errors(t *testing.T) {
	dir := t.TempDir()
	for name, tc := range map[string]struct {
		cfg  notify.Config
		want string
	}{
		"NoOutbox":     {notify.Config{}, "OutboxPath"},
		"BadURL":       {notify.Config{OutboxPath: filepath.Join(dir, "a.db"), Webhooks: []notify.Webhook{{URL: "ftp://x"}}}, "webhooks[0].url"},
		"UnknownEvent": {notify.Config{OutboxPath: filepath.Join(dir, "b.db"), Webhooks: []notify.Webhook{{URL: "http://x/h", Events: []string{"approved"}}}}, `unknown event type "approved"`},
		"Duplicate":    {notify.Config{OutboxPath: filepath.Join(dir, "c.db"), Webhooks: []notify.Webhook{{URL: "http://x/h"}, {URL: "http://x/h"}}}, "twice"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := notify.New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}
