package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/storetest"
)

// TestChain_OneChainFromTwoReplicas: two stores (two replicas) append
// from many goroutines at once. The log is one chain without a gap, every
// append's events are adjacent, and each writer got back what was stored.
func TestAudit_OneChainFromTwoReplicas(t *testing.T) {
	ctx := context.Background()
	prefix := testPrefix(t)
	replicas := []*Store{newStore(t, prefix), newStore(t, prefix)}
	const writers, each = 16, 10
	var (
		mu       sync.Mutex
		returned = map[uint64]broker.Event{}
		wg       sync.WaitGroup
	)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := replicas[w%len(replicas)]
			for i := range each {
				lease := fmt.Sprintf("L%d-%d", w, i)
				evs, err := c.Apply(ctx, broker.Change{Events: []broker.Event{storetest.Ev(broker.EventRequest, lease), storetest.Ev(broker.EventIssue, lease)}})
				if err != nil {
					t.Error(err)
					return
				}
				if evs[1].Seq != evs[0].Seq+1 || evs[1].PrevHash != evs[0].Hash {
					t.Errorf("the events of one append are not adjacent: %+v", evs)
				}
				mu.Lock()
				for _, e := range evs {
					if _, dup := returned[e.Seq]; dup {
						t.Errorf("seq %d returned twice", e.Seq)
					}
					returned[e.Seq] = e
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	var v broker.ChainVerifier
	err := replicas[0].Events(ctx, 0, func(e broker.Event) (bool, error) {
		if r, ok := returned[e.Seq]; !ok || !reflect.DeepEqual(r, e) {
			t.Errorf("stored event %d differs from the one returned: %+v vs %+v", e.Seq, e, r)
		}
		return true, v.Next(e)
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(writers * each * 2); v.Count() != want {
		t.Errorf("the chain has %d events, want %d", v.Count(), want)
	}
	// The race was run: the replicas lost the head to each other and
	// chained again.
	if n := replicas[0].commits.conflicts.Load() + replicas[1].commits.conflicts.Load(); n == 0 {
		t.Error("no batch ever lost the head to the other replica: they did not race")
	} else {
		t.Logf("%d batches lost the head to the other replica and chained again", n)
	}
	last, err := replicas[1].LastEvent(ctx)
	if err != nil || last.Seq != v.Count() {
		t.Errorf("last = %+v, %v; want seq %d", last, err, v.Count())
	}
}

// TestChain_Events reads the log across pages, from every kind of start,
// and stops where fn says.
func TestAudit_Events(t *testing.T) {
	ctx := context.Background()
	c := newStore(t, testPrefix(t))
	if last, err := c.LastEvent(ctx); err != nil || last != nil {
		t.Fatalf("last of an empty log = %v, %v", last, err)
	}
	const n = 2*eventPage + 37
	for i := 0; i < n; i += 10 {
		var evs []broker.Event
		for j := i; j < min(i+10, n); j++ {
			evs = append(evs, storetest.Ev(broker.EventRequest, fmt.Sprint(j)))
		}
		if _, err := c.Apply(ctx, broker.Change{Events: evs}); err != nil {
			t.Fatal(err)
		}
	}
	collect := func(after, stopAt uint64) []uint64 {
		t.Helper()
		var seqs []uint64
		err := c.Events(ctx, after, func(e broker.Event) (bool, error) {
			seqs = append(seqs, e.Seq)
			return e.Seq != stopAt, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return seqs
	}
	for _, after := range []uint64{0, 1, eventPage - 1, eventPage, 300, n - 1, n, n + 5, 1<<64 - 1} {
		var want []uint64
		for q := after + 1; q <= n && after < n; q++ {
			want = append(want, q)
		}
		if got := collect(after, 0); !slices.Equal(got, want) {
			t.Errorf("events after %d: %d events, want %d", after, len(got), len(want))
		}
	}
	if got := collect(10, 270); len(got) != 260 || got[len(got)-1] != 270 {
		t.Errorf("events stopped by fn: %d events", len(got))
	}
	boom := errors.New("boom")
	if err := c.Events(ctx, 0, func(broker.Event) (bool, error) { return true, boom }); err != boom {
		t.Errorf("events returns fn's error: got %v", err)
	}
}

// TestChain_RolledBackHead: a head set back under a longer log (a restored
// backup of the head alone, an edit) makes appends fail, naming it,
// instead of forking the chain or retrying for ever.
func TestAudit_RolledBackHead(t *testing.T) {
	ctx := context.Background()
	cli := newClient(t)
	s := newStore(t, testPrefix(t))
	c := s.audit
	for range 3 {
		if _, err := s.Apply(ctx, broker.Change{Events: []broker.Event{storetest.Ev(broker.EventConfigLoad, "")}}); err != nil {
			t.Fatal(err)
		}
	}
	first, err := cli.Get(ctx, c.eventKey(1))
	if err != nil {
		t.Fatal(err)
	}
	var e broker.Event
	if err := json.Unmarshal(first.Kvs[0].Value, &e); err != nil {
		t.Fatal(err)
	}
	hv, _ := json.Marshal(headRecord{Seq: 1, Hash: e.Hash})
	if _, err := cli.Put(ctx, c.headKey(), string(hv)); err != nil {
		t.Fatal(err)
	}
	_, err = s.Apply(ctx, broker.Change{Events: []broker.Event{storetest.Ev(broker.EventFreeze, "")}})
	if !errors.Is(err, ErrCorrupt) || !errors.Is(err, broker.ErrStoreUnavailable) {
		t.Fatalf("append over a rolled-back head: %v, want ErrCorrupt and ErrStoreUnavailable", err)
	}
	if res, _ := cli.Get(ctx, c.eventKey(4)); len(res.Kvs) != 0 {
		t.Fatal("an event was written past the log")
	}
}

// TestChain_LeaderKilled: writers append while the etcd leader is killed
// and restarted. Every append that was acknowledged is in the log, the
// log is one chain, and appends resume once a new leader is elected.
func TestAudit_LeaderKilled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := newStore(t, testPrefix(t))
	var (
		mu    sync.Mutex
		acked = map[uint64]string{}
		stop  = make(chan struct{})
		acks  = make(chan struct{}, 1<<16) // a token per acknowledged append
		wg    sync.WaitGroup
	)
	appendOne := func(w, i int) {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		tag := fmt.Sprintf("w%d-%d", w, i)
		evs, err := c.Apply(actx, broker.Change{Events: []broker.Event{storetest.Ev(broker.EventRequest, tag)}})
		if err != nil {
			return // not acknowledged: it may or may not be in the log
		}
		mu.Lock()
		acked[evs[0].Seq] = tag
		mu.Unlock()
		acks <- struct{}{}
	}
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				appendOne(w, i)
			}
		}()
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	waitFor := func(n int) {
		for count() < n {
			select {
			case <-ctx.Done():
				t.Fatalf("only %d appends acknowledged, waiting for %d", count(), n)
			case <-acks:
			}
		}
	}
	waitFor(50)
	leader, err := st.Etcd.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st.Etcd.Kill(leader)
	killed, at := count(), time.Now()
	waitFor(killed + 50) // a new leader serves the writers
	t.Logf("appends resumed %v after the leader's kill", time.Since(at))
	if err := st.Etcd.Restart(ctx, leader); err != nil {
		t.Fatal(err)
	}
	waitFor(count() + 50)
	close(stop)
	wg.Wait()

	var v broker.ChainVerifier
	stored := map[uint64]string{}
	err = c.Events(ctx, 0, func(e broker.Event) (bool, error) {
		stored[e.Seq] = e.Lease
		return true, v.Next(e)
	})
	if err != nil {
		t.Fatal(err)
	}
	for seq, tag := range acked {
		if stored[seq] != tag {
			t.Errorf("acknowledged event %d (%s) is %q in the log", seq, tag, stored[seq])
		}
	}
}

// TestFence: changes under a replica's fence (its duties' election)
// commit while it leads; once its session ends (as when etcd stops
// hearing from the replica), they write nothing and fail with ErrFenced —
// while its unfenced changes, even in the same batch, still commit — and
// the replica elected after it commits under its own fence.
func TestFence(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	prefix := testPrefix(t)
	elected := func() (*Store, context.Context, *concurrency.Session) {
		cli := newClient(t)
		session, err := concurrency.NewSession(cli, concurrency.WithTTL(5))
		if err != nil {
			t.Fatal(err)
		}
		e := concurrency.NewElection(session, prefix+"/duties")
		if err := e.Campaign(ctx, "replica"); err != nil {
			t.Fatal(err)
		}
		s, err := New(cli, prefix, Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		fence := &Fence{Cmp: clientv3.Compare(clientv3.CreateRevision(e.Key()), "=", e.Rev())}
		return s, WithFence(ctx, fence), session
	}
	first, fenced, session := elected()
	freeze := broker.Change{Events: []broker.Event{storetest.Ev(broker.EventFreeze, "")}}
	if _, err := first.Apply(fenced, freeze); err != nil {
		t.Fatalf("a change under the fence while elected: %v", err)
	}
	if err := session.Close(); err != nil { // resigns
		t.Fatal(err)
	}
	second, secondFenced, _ := elected()
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range errs {
		wg.Go(func() {
			if i == 0 {
				_, errs[i] = first.Apply(fenced, freeze)
			} else {
				_, errs[i] = first.Apply(ctx, broker.Change{Events: []broker.Event{storetest.Ev(broker.EventRequest, "")}})
			}
		})
	}
	wg.Wait()
	if !errors.Is(errs[0], ErrFenced) || !errors.Is(errs[0], broker.ErrStoreUnavailable) {
		t.Fatalf("a fenced change after the election was lost: %v, want ErrFenced", errs[0])
	}
	for _, err := range errs[1:] {
		if err != nil {
			t.Fatalf("an unfenced change of the replica that lost the election: %v", err)
		}
	}
	evs, err := second.Apply(secondFenced, broker.Change{Events: []broker.Event{storetest.Ev(broker.EventUnfreeze, "")}})
	if err != nil || evs[0].Seq != 7 {
		t.Fatalf("the new leader's change: %+v, %v; want seq 7 (the fenced change wrote nothing)", evs, err)
	}
}

// TestWatchEvents: a replica's watch sees, once started, every event two
// replicas append, each once, in Seq order.
func TestWatchEvents(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	prefix := testPrefix(t)
	watcher, other := newStore(t, prefix), newStore(t, prefix)
	const each = 50
	started := make(chan struct{})
	seen := make(chan broker.Event, 4*each)
	wctx, stop := context.WithCancel(ctx)
	watched := make(chan error, 1)
	go func() {
		watched <- watcher.WatchEvents(wctx, func() { close(started) }, func(evs []broker.Event) {
			for _, e := range evs {
				seen <- e
			}
		})
	}()
	<-started
	var wg sync.WaitGroup
	for _, s := range []*Store{watcher, other} {
		wg.Go(func() {
			for range each {
				if _, err := s.Apply(ctx, broker.Change{Events: []broker.Event{storetest.Ev(broker.EventRequest, ""), storetest.Ev(broker.EventIssue, "")}}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	for want := uint64(1); want <= 4*each; want++ {
		select {
		case e := <-seen:
			if e.Seq != want {
				t.Fatalf("the watch gave seq %d, want %d", e.Seq, want)
			}
		case <-ctx.Done():
			t.Fatalf("the watch gave %d of %d events", want-1, 4*each)
		}
	}
	stop()
	if err := <-watched; !errors.Is(err, context.Canceled) {
		t.Fatalf("the watch ended with %v, want its context's end", err)
	}
}
