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

// source is an in-memory audit log that keeps broker.Audit.Follow's
// contract: every event after a sequence number, in order, then each new
// one as it is added. It tells of each Follow call (its after) on
// follows, and fails the next look at the log with fail, once.
type source struct {
	mu      sync.Mutex
	log     []broker.Event
	wake    chan struct{} // closed by add
	fail    error
	follows chan uint64
}

func newSource() *source { return &source{follows: make(chan uint64, 16)} }

func (s *source) Follow(ctx context.Context, after uint64, f broker.EventFilter, fn func([]broker.Event) error) error {
	select {
	case s.follows <- after:
	default: // nobody asks any more
	}
	for {
		s.mu.Lock()
		evs := slices.Clone(s.log[min(after, uint64(len(s.log))):])
		if s.wake == nil {
			s.wake = make(chan struct{})
		}
		wake, fail := s.wake, s.fail
		s.fail = nil
		s.mu.Unlock()
		if fail != nil {
			return fail
		}
		var match []broker.Event
		for _, e := range evs {
			after = e.Seq
			if f.Match(e) {
				match = append(match, e)
			}
		}
		if len(match) > 0 {
			if err := fn(match); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake:
		}
	}
}

func (s *source) LastSeq(context.Context) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return uint64(len(s.log)), nil
}

// add appends e to the log, as the Service writes an event.
func (s *source) add(e broker.Event) broker.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	e.Seq = uint64(len(s.log) + 1)
	e.Time = time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC).Add(time.Duration(e.Seq) * time.Second)
	e.Hash = "hash-of-" + e.Task
	s.log = append(s.log, e)
	if s.wake != nil {
		close(s.wake)
		s.wake = nil
	}
	return e
}

// failNext makes Follow return err at its next look at the log.
func (s *source) failNext(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = err
	if s.wake != nil {
		close(s.wake)
		s.wake = nil
	}
}

// followed waits for the next Follow call and returns its after.
func (s *source) followed(t *testing.T) uint64 {
	t.Helper()
	select {
	case after := <-s.follows:
		return after
	case <-time.After(10 * time.Second):
		t.Fatal("Follow not called within 10s")
		return 0
	}
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
	hit  chan struct{} // a token after each request, delivered or not
	ch   chan delivery
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{ch: make(chan delivery, 64), hit: make(chan struct{}, 1)}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.hits.Add(1)
		select {
		case r.hit <- struct{}{}:
		default: // a token is waiting already
		}
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

// taskOf is the task of d's Payload.
func taskOf(t *testing.T, d delivery) string {
	t.Helper()
	var p notify.Payload
	if err := json.Unmarshal(d.body, &p); err != nil {
		t.Fatalf("delivery %s: %v", d.body, err)
	}
	return p.Task
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

// waitHits waits until the receiver has been sent n requests.
func (r *receiver) waitHits(t *testing.T, n int64) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for r.hits.Load() < n {
		select {
		case <-r.hit:
		case <-deadline:
			t.Fatalf("%d requests within 10s, want %d", r.hits.Load(), n)
		}
	}
}

// nothingMore adds sentinel, an event the receiver's webhook wants, and
// checks that it is the next delivery (its body holds marker). While
// they succeed, a webhook's deliveries go in event order, so anything
// else still to come — a duplicate, an event it did not ask for — would
// arrive first: no wait for silence is needed.
func (r *receiver) nothingMore(t *testing.T, src *source, sentinel broker.Event, marker string) {
	t.Helper()
	src.add(sentinel)
	if d := r.next(t); !strings.Contains(string(d.body), marker) {
		t.Fatalf("delivery %s, want the sentinel %q and nothing before it", d.body, marker)
	}
}

// sentinel is an event of the default types, for nothingMore.
var sentinel = approvalRequested("sentinel")

// start runs a notifier over src until the test ends (or stop is called),
// from the moment it follows src: events added after start returns reach
// it.
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
	select {
	case <-src.follows:
	case err := <-done:
		t.Fatalf("Run returned before it followed the events: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not follow the events within 10s")
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
	src, rcv := newSource(), newReceiver(t)
	now := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	start(t, src, notify.Config{
		Webhooks: []notify.Webhook{{URL: rcv.srv.URL + "/hook", Secret: secret}},
		Now:      func() time.Time { return now },
	})
	src.add(broker.Event{Type: broker.EventIssue, Actor: "spiffe://example.org/agent/report-bot", Task: "report"}) // not a default event
	e := src.add(approvalRequested("ticket"))

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
	rcv.nothingMore(t, src, sentinel, `"task":"sentinel"`) // the issue event was not sent
}

// TestNotifier_Slack: a Slack webhook gets {"text": "..."} only.
func TestNotifier_Slack(t *testing.T) {
	src, rcv := newSource(), newReceiver(t)
	start(t, src, notify.Config{Webhooks: []notify.Webhook{{URL: rcv.srv.URL, Slack: true, Events: []string{"pause"}}}})
	src.add(approvalRequested("ticket"))
	src.add(broker.Event{Type: broker.EventPause, Actor: "spiffe://example.org/ops/rex", Subject: "spiffe://example.org/agent/chatty",
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
	rcv.nothingMore(t, src, broker.Event{Type: broker.EventPause, Subject: "spiffe://example.org/agent/sentinel"}, "agent/sentinel")
}

// metrics records what the notifier reports.
type metrics struct {
	mu       sync.Mutex
	results  map[string]int
	maxDepth int
	depth    int
	changed  chan struct{} // a token after each report
}

func newMetrics() *metrics {
	return &metrics{results: map[string]int{}, changed: make(chan struct{}, 1)}
}

func (m *metrics) WebhookDelivery(result string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.results[result]++
	m.signal()
}

func (m *metrics) WebhookOutbox(depth int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.depth, m.maxDepth = depth, max(m.maxDepth, depth)
	m.signal()
}

func (m *metrics) signal() {
	select {
	case m.changed <- struct{}{}:
	default: // a token is waiting already
	}
}

// wait waits until cond, called with m locked, holds after a report.
func (m *metrics) wait(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for !m.holds(cond) {
		select {
		case <-m.changed:
		case <-deadline:
			t.Fatalf("not within 10s: %s", what)
		}
	}
}

func (m *metrics) holds(cond func() bool) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return cond()
}

// TestNotifier_Retry: while the receiver is down deliveries are retried
// with backoff, each on its own schedule; they arrive, once each, when
// it returns (in either order: each was moved aside when it failed). The
// metrics see the failures, the deliveries and the outbox grow and
// drain.
func TestNotifier_Retry(t *testing.T) {
	src, rcv, m := newSource(), newReceiver(t), newMetrics()
	rcv.down.Store(true)
	start(t, src, notify.Config{Webhooks: []notify.Webhook{{URL: rcv.srv.URL, Secret: secret}}, Metrics: m})
	src.add(approvalRequested("a"))
	src.add(approvalRequested("b"))
	rcv.waitHits(t, 6)
	m.wait(t, "the outbox reported with both waiting", func() bool { return m.maxDepth == 2 })
	rcv.down.Store(false)
	if got := []string{taskOf(t, rcv.next(t)), taskOf(t, rcv.next(t))}; !slices.Contains(got, "a") || !slices.Contains(got, "b") {
		t.Fatalf("delivered %v, want a and b", got)
	}
	rcv.nothingMore(t, src, sentinel, `"task":"sentinel"`)
	m.wait(t, "3 delivered and the outbox reported empty", func() bool {
		return m.results[notify.ResultDelivered] == 3 && m.depth == 0
	})
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.results[notify.ResultFailed] < 5 || m.maxDepth != 2 {
		t.Fatalf("metrics: results %v, outbox depth %d (max %d); want the failures, 2 waiting then none", m.results, m.depth, m.maxDepth)
	}
}

// TestNotifier_HangingReceiver: a receiver that never answers delays only
// its own deliveries, not another webhook's.
func TestNotifier_HangingReceiver(t *testing.T) {
	hang := make(chan struct{})
	stuck := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-hang }))
	t.Cleanup(stuck.Close)
	t.Cleanup(func() { close(hang) }) // runs first: lets stuck.Close finish
	src, rcv := newSource(), newReceiver(t)
	start(t, src, notify.Config{
		Webhooks: []notify.Webhook{{URL: stuck.URL, Secret: secret}, {URL: rcv.srv.URL, Secret: secret}},
		Client:   &http.Client{Timeout: time.Minute},
	})
	begin := time.Now()
	src.add(approvalRequested("a"))
	src.add(approvalRequested("b"))
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
	src, rcv := newSource(), newReceiver(t)
	path := filepath.Join(t.TempDir(), "outbox.db")
	rcv.down.Store(true)
	stop := start(t, src, notify.Config{OutboxPath: path, Webhooks: []notify.Webhook{{URL: rcv.srv.URL}}})
	src.add(approvalRequested("before"))
	rcv.waitHits(t, 2)
	stop()
	src.add(approvalRequested("while-down"))
	rcv.down.Store(false)

	start(t, src, notify.Config{OutboxPath: path, Webhooks: []notify.Webhook{{URL: rcv.srv.URL}}})
	// Delivery is at least once: an attempt the first notifier gave up on
	// as it stopped may still reach the receiver, which is up by then, so
	// "before" can come twice. Nothing may be lost.
	got := map[string]bool{}
	for n := 0; !got["before"] || !got["while-down"]; n++ {
		if n == 3 {
			t.Fatalf("delivered %v in 3 deliveries", got)
		}
		got[taskOf(t, rcv.next(t))] = true
	}
	rcv.nothingMore(t, src, sentinel, `"task":"sentinel"`)
}

// TestNotifier_RemovedWebhook: deliveries still in the outbox for a
// webhook taken out of the config are moved to the dead letters at the
// next start, and the remaining webhooks are served.
func TestNotifier_RemovedWebhook(t *testing.T) {
	src, gone, kept := newSource(), newReceiver(t), newReceiver(t)
	path := filepath.Join(t.TempDir(), "outbox.db")
	gone.down.Store(true)
	stop := start(t, src, notify.Config{OutboxPath: path, Webhooks: []notify.Webhook{{URL: gone.srv.URL}}})
	src.add(approvalRequested("never"))
	gone.waitHits(t, 2)
	stop()

	stop = start(t, src, notify.Config{OutboxPath: path, Webhooks: []notify.Webhook{{URL: kept.srv.URL}}})
	src.add(approvalRequested("after"))
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

// TestNotifier_FollowFails: when following the audit events fails (the
// log cannot be read), the notifier follows again from the last event in
// its outbox: the next event is sent, the previous one not again.
func TestNotifier_FollowFails(t *testing.T) {
	src, rcv := newSource(), newReceiver(t)
	start(t, src, notify.Config{Webhooks: []notify.Webhook{{URL: rcv.srv.URL}}})
	a := src.add(approvalRequested("a"))
	if d := rcv.next(t); !strings.Contains(string(d.body), `"task":"a"`) {
		t.Fatalf("delivered %s", d.body)
	}
	src.failNext(broker.Errorf(broker.EUNAVAILABLE, "the audit log is unavailable"))
	if after := src.followed(t); after != a.Seq {
		t.Fatalf("followed again after seq %d, want %d", after, a.Seq)
	}
	src.add(approvalRequested("b"))
	if d := rcv.next(t); !strings.Contains(string(d.body), `"task":"b"`) {
		t.Fatalf("delivered %s", d.body)
	}
	rcv.nothingMore(t, src, sentinel, `"task":"sentinel"`)
}

// TestNotifier_FirstStart: a new outbox starts at the end of the audit
// log; the past is not sent.
func TestNotifier_FirstStart(t *testing.T) {
	src, rcv := newSource(), newReceiver(t)
	src.add(approvalRequested("old"))
	start(t, src, notify.Config{Webhooks: []notify.Webhook{{URL: rcv.srv.URL}}})
	src.add(approvalRequested("new"))
	if d := rcv.next(t); !strings.Contains(string(d.body), `"task":"new"`) {
		t.Fatalf("delivered %s", d.body)
	}
	rcv.nothingMore(t, src, sentinel, `"task":"sentinel"`)
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
