package broker_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/boltstore"
	"github.com/latchbroker/latch/templates"
)

// hubMetrics counts what the event feed and the refusals report.
type hubMetrics struct {
	mu         sync.Mutex
	dropped    int
	violations []string
}

func (*hubMetrics) RequestDone(string, string, time.Duration) {}
func (*hubMetrics) RevocationDone(string)                     {}
func (*hubMetrics) QueueDepth(int)                            {}
func (*hubMetrics) AuditAppendFailed()                        {}
func (*hubMetrics) StoreWrite(time.Duration)                  {}
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

// follow runs svc.Follow until the test ends and passes on each event it
// delivers. The channel's buffer is large enough for every test here, so
// that a test reads at its own pace and still sees what Follow did.
func follow(t *testing.T, svc *broker.Service, after uint64, f broker.EventFilter) <-chan broker.Event {
	t.Helper()
	ch := make(chan broker.Event, 4096)
	runFollow(t, svc, after, f, func(evs []broker.Event) error {
		for _, e := range evs {
			ch <- e
		}
		return nil
	})
	return ch
}

// runFollow runs svc.Follow with fn until the test ends, and checks that
// it then returns the context's error.
func runFollow(t *testing.T, svc *broker.Service, after uint64, f broker.EventFilter, fn func([]broker.Event) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Audit().Follow(ctx, after, f, fn) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Follow returned %v, want context.Canceled", err)
		}
	})
}

func receive(t *testing.T, ch <-chan broker.Event) broker.Event {
	t.Helper()
	select {
	case e := <-ch:
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10s")
	}
	return broker.Event{}
}

// receiveSeqs reads n events and checks that they are first+1 … first+n.
func receiveSeqs(t *testing.T, ch <-chan broker.Event, first uint64, n int) {
	t.Helper()
	for i := range n {
		if e := receive(t, ch); e.Seq != first+uint64(i)+1 {
			t.Fatalf("event %d has seq %d, want %d", i, e.Seq, first+uint64(i)+1)
		}
	}
}

func TestService_Follow(t *testing.T) {
	svc, _, _ := newHubService(t)
	ctx := context.Background()
	const bot = "spiffe://example.org/agent/bot"
	all := follow(t, svc, 0, broker.EventFilter{})
	mine := follow(t, svc, 0, broker.EventFilter{Agent: bot})
	freezes := follow(t, svc, 0, broker.EventFilter{Types: []broker.EventType{broker.EventFreeze, broker.EventUnfreeze}})

	if err := svc.Agents().SetFreeze(ctx, "spiffe://example.org/op", true, "incident"); err != nil {
		t.Fatal(err)
	}
	if err := svc.Agents().SetState(ctx, "op", bot, broker.AgentPaused, "odd"); err != nil {
		t.Fatal(err)
	}
	if err := svc.Agents().SetFreeze(ctx, "spiffe://example.org/op", false, "over"); err != nil {
		t.Fatal(err)
	}
	if err := svc.Agents().SetState(ctx, "spiffe://example.org/op", bot, broker.AgentActive, "fine"); err != nil {
		t.Fatal(err)
	}

	e := receive(t, all)
	if e.Type != broker.EventFreeze || e.Seq != 1 || e.Hash == "" {
		t.Fatalf("first event = %+v, want the chained freeze", e)
	}
	for i, want := range []broker.EventType{broker.EventPause, broker.EventUnfreeze, broker.EventResume} {
		if e := receive(t, all); e.Type != want || e.Seq != uint64(i+2) {
			t.Fatalf("event %d = %+v, want %s", i+2, e, want)
		}
	}
	// Each filtered follower's next event is the second it wants: the
	// ones between were not let through.
	if e := receive(t, mine); e.Type != broker.EventPause || e.Subject != bot {
		t.Fatalf("agent filter got %+v", e)
	}
	if e := receive(t, mine); e.Type != broker.EventResume {
		t.Fatalf("agent filter got %+v, want the resume", e)
	}
	if e := receive(t, freezes); e.Type != broker.EventFreeze {
		t.Fatalf("type filter got %+v", e)
	}
	if e := receive(t, freezes); e.Type != broker.EventUnfreeze {
		t.Fatalf("type filter got %+v, want the unfreeze", e)
	}

	// From a sequence number: the log first, then what is new.
	resumed := follow(t, svc, 2, broker.EventFilter{})
	if err := svc.Agents().SetFreeze(ctx, "spiffe://example.org/op", true, "again"); err != nil {
		t.Fatal(err)
	}
	receiveSeqs(t, resumed, 2, 3)
}

// TestService_Follow_SlowFollower: a follower stuck in fn while more
// events are written than the live feed holds costs the writer nothing;
// once it moves again it gets every event, once, in order, from the
// audit log, and the events it missed live are counted.
func TestService_Follow_SlowFollower(t *testing.T) {
	svc, m, _ := newHubService(t)
	ctx := context.Background()
	const extra = 10
	const n = broker.LiveFeedSize + extra
	first, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	got := make(chan broker.Event, n)
	runFollow(t, svc, 0, broker.EventFilter{}, func(evs []broker.Event) error {
		once.Do(func() { close(first); <-release })
		for _, e := range evs {
			got <- e
		}
		return nil
	})
	if err := svc.Agents().SetFreeze(ctx, "spiffe://example.org/op", true, "flip"); err != nil {
		t.Fatal(err)
	}
	free := sync.OnceFunc(func() { close(release) })
	t.Cleanup(free) // before Follow's cleanup, should the test fail
	select {
	case <-first: // stuck with event 1, caught up live
	case <-time.After(10 * time.Second):
		t.Fatal("event 1 not delivered")
	}
	start := time.Now()
	for i := 1; i < n; i++ {
		if err := svc.Agents().SetFreeze(ctx, "spiffe://example.org/op", i%2 == 0, "flip"); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("writes took %s with a stuck follower", d)
	}
	free()
	receiveSeqs(t, got, 0, n)
	m.mu.Lock()
	defer m.mu.Unlock()
	// Events 2 … n-LiveFeedSize were overwritten while it was stuck.
	if want := n - broker.LiveFeedSize - 1; m.dropped != want {
		t.Fatalf("metrics counted %d events missed live, want %d", m.dropped, want)
	}
}

// TestService_Follow_ConcurrentWriters: writes committed together are
// published in whatever order their callers resume; followers, a fast
// and a slow one, still see strictly increasing, gap-free sequences.
func TestService_Follow_ConcurrentWriters(t *testing.T) {
	svc, _, _ := newHubService(t)
	ctx := context.Background()
	fast := follow(t, svc, 0, broker.EventFilter{})
	slow := make(chan broker.Event, 4096)
	runFollow(t, svc, 0, broker.EventFilter{}, func(evs []broker.Event) error {
		time.Sleep(time.Millisecond) // a consumer with real work to do, not synchronisation
		for _, e := range evs {
			slow <- e
		}
		return nil
	})
	const writers, each = 8, 40
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			agent := fmt.Sprintf("spiffe://example.org/agent/a%d", w)
			for i := range each {
				state := map[bool]broker.AgentState{true: broker.AgentPaused, false: broker.AgentActive}[i%2 == 0]
				if err := svc.Agents().SetState(ctx, "spiffe://example.org/op", agent, state, "flip"); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	receiveSeqs(t, fast, 0, writers*each)
	receiveSeqs(t, slow, 0, writers*each)
}

// TestService_Follow_Unpublished: an event that is durable but never
// reached the live feed (its write timed out in apply after the store
// took it) is delivered all the same: at once when a later event reveals
// the gap, and by the periodic read of the log when none does.
func TestService_Follow_Unpublished(t *testing.T) {
	svc, _, st := newHubService(t)
	ctx := context.Background()
	evs := follow(t, svc, 0, broker.EventFilter{})
	if err := svc.Agents().SetFreeze(ctx, "spiffe://example.org/op", true, "a"); err != nil {
		t.Fatal(err)
	}
	receiveSeqs(t, evs, 0, 1)
	unseen := broker.Change{Events: []broker.Event{{Type: broker.EventIssue, Actor: "spiffe://example.org/agent/x", Time: time.Now()}}}
	if _, err := st.Apply(ctx, unseen); err != nil {
		t.Fatal(err)
	}
	if err := svc.Agents().SetFreeze(ctx, "spiffe://example.org/op", false, "b"); err != nil {
		t.Fatal(err)
	}
	receiveSeqs(t, evs, 1, 2)

	if _, err := st.Apply(ctx, unseen); err != nil {
		t.Fatal(err)
	}
	if e := receive(t, evs); e.Seq != 4 || e.Type != broker.EventIssue {
		t.Fatalf("got %+v, want the unpublished issue (seq 4)", e)
	}
}

func TestService_Follow_Errors(t *testing.T) {
	svc, _, st := newHubService(t)
	ctx := context.Background()
	if err := svc.Agents().SetFreeze(ctx, "spiffe://example.org/op", true, "a"); err != nil {
		t.Fatal(err)
	}
	t.Run("ErrFn", func(t *testing.T) {
		boom := errors.New("boom")
		err := svc.Audit().Follow(ctx, 0, broker.EventFilter{}, func([]broker.Event) error { return boom })
		if !errors.Is(err, boom) {
			t.Fatalf("Follow = %v, want fn's error", err)
		}
	})
	t.Run("ErrContext", func(t *testing.T) {
		c, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		err := svc.Audit().Follow(c, 1, broker.EventFilter{}, func([]broker.Event) error { return nil })
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Follow = %v, want the context's error", err)
		}
	})
	t.Run("ErrUnavailable", func(t *testing.T) {
		st.Close()
		err := svc.Audit().Follow(ctx, 0, broker.EventFilter{}, func([]broker.Event) error { return nil })
		if broker.ErrorCode(err) != broker.EUNAVAILABLE {
			t.Fatalf("Follow on a closed store = %v, want unavailable", err)
		}
	})
}

func TestService_AuditEvents(t *testing.T) {
	svc, _, _ := newHubService(t)
	ctx := context.Background()
	if seq, err := svc.Audit().LastSeq(ctx); err != nil || seq != 0 {
		t.Fatalf("empty log: %d, %v", seq, err)
	}
	for i := range 5 {
		if err := svc.Agents().SetFreeze(ctx, "spiffe://example.org/op", i%2 == 0, "flip"); err != nil {
			t.Fatal(err)
		}
	}
	if seq, err := svc.Audit().LastSeq(ctx); err != nil || seq != 5 {
		t.Fatalf("LastAuditSeq = %d, %v", seq, err)
	}
	var seqs []uint64
	err := svc.Audit().Events(ctx, 2, func(e broker.Event) (bool, error) {
		seqs = append(seqs, e.Seq)
		return len(seqs) < 2, nil
	})
	if err != nil || len(seqs) != 2 || seqs[0] != 3 || seqs[1] != 4 {
		t.Fatalf("events after 2 = %v, %v", seqs, err)
	}
}
