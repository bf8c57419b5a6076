package notify_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/latchbroker/latch/broker/brokertest"
	"github.com/latchbroker/latch/notify"
)

// picky is a webhook receiver that fails every delivery of one task, in
// the way fail does, until accept is set, and takes all others.
type picky struct {
	srv     *httptest.Server
	accept  atomic.Bool
	refused atomic.Int64
	refusal chan struct{} // a token after each refusal
	got     chan notify.Payload
}

func newPicky(t *testing.T, task string, fail http.HandlerFunc) *picky {
	r := &picky{refusal: make(chan struct{}, 1), got: make(chan notify.Payload, 64)}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var p notify.Payload
		b, _ := io.ReadAll(req.Body)
		if err := json.Unmarshal(b, &p); err != nil {
			t.Errorf("delivery %s: %v", b, err)
		}
		if p.Task == task && !r.accept.Load() {
			r.refused.Add(1)
			select {
			case r.refusal <- struct{}{}:
			default: // a token is waiting already
			}
			fail(w, req)
			return
		}
		r.got <- p
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *picky) next(t *testing.T) notify.Payload {
	t.Helper()
	select {
	case p := <-r.got:
		return p
	case <-time.After(10 * time.Second):
		t.Fatal("no delivery within 10s")
		return notify.Payload{}
	}
}

// waitRefused waits until the receiver has refused n deliveries.
func (r *picky) waitRefused(t *testing.T, n int64) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for r.refused.Load() < n {
		select {
		case <-r.refusal:
		case <-deadline:
			t.Fatalf("%d refusals within 10s, want %d", r.refused.Load(), n)
		}
	}
}

// TestNotifier_FailedDeliveryMovedAside: a receiver that fails event A
// but accepts B gets B while A is retried on its own schedule, whether A
// is refused (500), the receiver says it is unavailable (503) or does
// not answer in time, and even when A's retries come round faster than
// the outbox is polled; after a restart A is still in the outbox and is
// delivered once the receiver takes it. Nothing is lost or sent twice.
func TestNotifier_FailedDeliveryMovedAside(t *testing.T) {
	refuse := func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "cannot handle it", http.StatusInternalServerError)
	}
	busy := func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "busy", http.StatusServiceUnavailable) }
	hang := func(_ http.ResponseWriter, req *http.Request) { <-req.Context().Done() } // until the client gives up
	for name, tc := range map[string]struct {
		fail    http.HandlerFunc
		backoff time.Duration // 0: start's default; 1ns: a is due again at every round
	}{
		"Refused":              {fail: refuse},
		"Unavailable":          {fail: busy},
		"NoAnswer":             {fail: hang},
		"UnavailableEveryPoll": {fail: busy, backoff: time.Nanosecond},
		"NoAnswerEveryPoll":    {fail: hang, backoff: time.Nanosecond},
	} {
		t.Run(name, func(t *testing.T) {
			src, rcv, m := newSource(), newPicky(t, "a", tc.fail), newMetrics()
			cfg := notify.Config{
				OutboxPath:  filepath.Join(t.TempDir(), "outbox.db"),
				Webhooks:    []notify.Webhook{{URL: rcv.srv.URL}},
				MaxAttempts: 1000, // never dead here
				Client:      &http.Client{Timeout: 200 * time.Millisecond},
				Metrics:     m,
				MinBackoff:  tc.backoff, MaxBackoff: tc.backoff,
			}
			stop := start(t, src, cfg)
			a := src.add(approvalRequested("a"))
			b := src.add(approvalRequested("b"))
			if p := rcv.next(t); p.Task != "b" {
				t.Fatalf("delivered %q, want b (a is refused)", p.Task)
			}
			// The receiver has b; once the notifier knows, b is out of the
			// outbox and a restart does not send it again.
			m.wait(t, "b recorded as delivered", func() bool { return m.results[notify.ResultDelivered] == 1 })
			rcv.waitRefused(t, 2) // a's first attempt, and a retry
			stop()

			rcv.accept.Store(true)
			start(t, src, cfg)
			if p := rcv.next(t); p.Task != "a" || p.Seq != a.Seq || p.Seq >= b.Seq {
				t.Fatalf("after the restart delivered %q (seq %d), want a (seq %d, before b's %d)", p.Task, p.Seq, a.Seq, b.Seq)
			}
			src.add(sentinel)
			if p := rcv.next(t); p.Task != "sentinel" {
				t.Fatalf("delivered %q, want the sentinel and nothing before it", p.Task)
			}
		})
	}
}

// logWatch is a slog.Handler that sends the "count" of every record
// with message msg on ch, for a test to wait on what the code logs.
type logWatch struct {
	msg string
	ch  chan int64
}

func (h logWatch) Enabled(context.Context, slog.Level) bool { return true }
func (h logWatch) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h logWatch) WithGroup(string) slog.Handler            { return h }

func (h logWatch) Handle(_ context.Context, r slog.Record) error {
	if r.Message != h.msg {
		return nil
	}
	var n int64 = -1
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "count" {
			n = a.Value.Int64()
		}
		return true
	})
	h.ch <- n
	return nil
}

func (h logWatch) wait(t *testing.T) int64 {
	t.Helper()
	select {
	case n := <-h.ch:
		return n
	case <-time.After(10 * time.Second):
		t.Fatalf("not logged within 10s: %q", h.msg)
		return 0
	}
}

// TestNotifier_DeadLetterExpiry: a dead letter is deleted once it has
// been dead DeadLetterTTL, by the hourly look while running and by the
// look at start; a younger one is kept until its own time.
func TestNotifier_DeadLetterExpiry(t *testing.T) {
	src, rcv, m := newSource(), newReceiver(t), newMetrics()
	rcv.down.Store(true)
	clk := brokertest.NewClock(time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC))
	pruned := logWatch{msg: "deleted expired webhook dead letters", ch: make(chan int64, 4)}
	cfg := notify.Config{
		OutboxPath: filepath.Join(t.TempDir(), "outbox.db"), Webhooks: []notify.Webhook{{URL: rcv.srv.URL}},
		MaxAttempts: 1, DeadLetterTTL: 24 * time.Hour, Now: clk.Now, Metrics: m, Logger: slog.New(pruned),
	}
	stop := start(t, src, cfg)
	src.add(approvalRequested("old"))
	m.wait(t, "old is dead", func() bool { return m.results[notify.ResultDead] == 1 })
	clk.Add(12 * time.Hour)
	src.add(approvalRequested("young"))
	m.wait(t, "young is dead", func() bool { return m.results[notify.ResultDead] == 2 })
	clk.Add(13 * time.Hour) // old has been dead 25h, young 13h
	if n := pruned.wait(t); n != 1 {
		t.Fatalf("deleted %d dead letters, want 1", n)
	}
	stop()
	if got := deadTasks(t, cfg.OutboxPath); !slices.Equal(got, []string{"young"}) {
		t.Fatalf("dead letters %v, want young's only", got)
	}

	clk.Add(12 * time.Hour) // young has been dead 25h
	stop = start(t, src, cfg)
	if n := pruned.wait(t); n != 1 {
		t.Fatalf("deleted %d dead letters at start, want 1", n)
	}
	stop()
	if got := deadTasks(t, cfg.OutboxPath); len(got) != 0 {
		t.Fatalf("dead letters %v, want none", got)
	}
}

// deadTasks returns the tasks of the outbox's dead letters. The
// notifier must be stopped: the outbox is locked while it runs.
func deadTasks(t *testing.T, path string) []string {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var tasks []string
	err = db.View(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("dead")).ForEach(func(_, v []byte) error {
			var it struct{ Body []byte }
			var p notify.Payload
			if err := json.Unmarshal(v, &it); err != nil {
				return err
			}
			if err := json.Unmarshal(it.Body, &p); err != nil {
				return err
			}
			tasks = append(tasks, p.Task)
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return tasks
}
