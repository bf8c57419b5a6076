package broker_test

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/boltstore"
	"github.com/latchbroker/latch/templates"
)

// hubMetrics counts what the event hub and the refusals report.
type hubMetrics struct {
	mu         sync.Mutex
	dropped    int
	violations []string
}

func (*hubMetrics) RequestDone(string, string, time.Duration) {}
func (*hubMetrics) RevocationDone(string)                     {}
func (*hubMetrics) QueueDepth(int)                            {}
func (*hubMetrics) AuditAppendFailed()                        {}
func (m *hubMetrics) Violation(r string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.violations = append(m.violations, r)
}
func (m *hubMetrics) EventDropped() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.dropped++
}

// newHubService is a Service with an empty policy on a real store: enough
// to write audit events through SetFreeze and SetAgentState.
func newHubService(t *testing.T) (*broker.Service, *hubMetrics, broker.Store) {
	t.Helper()
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "latch.db"), boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	pc, err := templates.ParsePolicy("policy.yaml", []byte("agents: []\noperators: [{ id: \"spiffe://example.org/op\", roles: [admin] }]\n"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := templates.Load(templates.Source{Policy: pc})
	if err != nil {
		t.Fatal(err)
	}
	m := &hubMetrics{}
	svc, err := broker.NewService(context.Background(), broker.Config{Store: st, Policy: p, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	return svc, m, st
}

func receive(t *testing.T, ch <-chan broker.Event) broker.Event {
	t.Helper()
	select {
	case e := <-ch:
		return e
	case <-time.After(5 * time.Second):
		t.Fatal("no event")
	}
	return broker.Event{}
}

func TestService_Subscribe(t *testing.T) {
	svc, _, _ := newHubService(t)
	ctx := context.Background()
	const bot = "spiffe://example.org/agent/bot"
	all, cancelAll := svc.Subscribe(broker.EventFilter{})
	defer cancelAll()
	mine, cancelMine := svc.Subscribe(broker.EventFilter{Agent: bot})
	defer cancelMine()
	freezes, cancelFreezes := svc.Subscribe(broker.EventFilter{Types: []broker.EventType{broker.EventFreeze, broker.EventUnfreeze}})
	defer cancelFreezes()

	if err := svc.SetFreeze(ctx, "spiffe://example.org/op", true, "incident"); err != nil {
		t.Fatal(err)
	}
	if err := svc.SetAgentState(ctx, "op", bot, broker.AgentPaused, "odd"); err != nil {
		t.Fatal(err)
	}

	e := receive(t, all)
	if e.Type != broker.EventFreeze || e.Seq == 0 || e.Hash == "" {
		t.Fatalf("first event = %+v, want the chained freeze", e)
	}
	if e := receive(t, all); e.Type != broker.EventPause {
		t.Fatalf("second event = %+v", e)
	}
	if e := receive(t, mine); e.Type != broker.EventPause || e.Subject != bot {
		t.Fatalf("agent filter got %+v", e)
	}
	if e := receive(t, freezes); e.Type != broker.EventFreeze {
		t.Fatalf("type filter got %+v", e)
	}
	select {
	case e := <-mine:
		t.Fatalf("agent filter let through %+v", e)
	case e := <-freezes:
		t.Fatalf("type filter let through %+v", e)
	default:
	}

	cancelMine()
	cancelMine() // twice is harmless
	if _, ok := <-mine; ok {
		t.Fatal("channel open after cancel")
	}
	if err := svc.SetFreeze(ctx, "spiffe://example.org/op", false, "over"); err != nil {
		t.Fatal(err)
	}
	if e := receive(t, all); e.Type != broker.EventUnfreeze {
		t.Fatalf("after another subscriber left: %+v", e)
	}
}

// TestService_Subscribe_SlowSubscriber: a subscriber that never reads
// costs events for itself only, never a wait for the writer.
func TestService_Subscribe_SlowSubscriber(t *testing.T) {
	svc, m, _ := newHubService(t)
	ctx := context.Background()
	_, cancel := svc.Subscribe(broker.EventFilter{})
	defer cancel()
	reader, cancelReader := svc.Subscribe(broker.EventFilter{})
	defer cancelReader()
	const extra = 10
	const n = broker.SubscriberBuffer + extra
	got := make(chan int)
	go func() {
		k := 0
		for range reader {
			k++
		}
		got <- k
	}()
	start := time.Now()
	for i := range n {
		if err := svc.SetFreeze(ctx, "spiffe://example.org/op", i%2 == 0, "flip"); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("writes took %s with a stuck subscriber", d)
	}
	cancelReader()
	read := <-got
	// The stuck subscriber lost exactly its overflow; the reader lost
	// what it did not read (nothing, unless the machine starved it).
	want := uint64(extra + n - read)
	if d := svc.EventsDropped(); d != want {
		t.Fatalf("EventsDropped = %d, want %d (reader got %d of %d)", d, want, read, n)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if uint64(m.dropped) != want {
		t.Fatalf("metrics counted %d drops, want %d", m.dropped, want)
	}
}

func TestService_AuditEvents(t *testing.T) {
	svc, _, _ := newHubService(t)
	ctx := context.Background()
	if seq, err := svc.LastAuditSeq(ctx); err != nil || seq != 0 {
		t.Fatalf("empty log: %d, %v", seq, err)
	}
	for i := range 5 {
		if err := svc.SetFreeze(ctx, "spiffe://example.org/op", i%2 == 0, "flip"); err != nil {
			t.Fatal(err)
		}
	}
	if seq, err := svc.LastAuditSeq(ctx); err != nil || seq != 5 {
		t.Fatalf("LastAuditSeq = %d, %v", seq, err)
	}
	var seqs []uint64
	err := svc.AuditEvents(ctx, 2, func(e broker.Event) (bool, error) {
		seqs = append(seqs, e.Seq)
		return len(seqs) < 2, nil
	})
	if err != nil || len(seqs) != 2 || seqs[0] != 3 || seqs[1] != 4 {
		t.Fatalf("events after 2 = %v, %v", seqs, err)
	}
}
