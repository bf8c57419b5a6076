package broker

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

// logStore is the audit log part of a Store, in memory: appended to by
// the test, counted when read.
type logStore struct {
	Store // nil: Follow reads only Events
	mu    sync.Mutex
	log   []Event
	reads int
	read  chan struct{} // a token after each read
}

func (l *logStore) Events(_ context.Context, after uint64, fn func(Event) (bool, error)) error {
	l.mu.Lock()
	l.reads++
	evs := slices.Clone(l.log[min(after, uint64(len(l.log))):])
	l.mu.Unlock()
	defer func() {
		select {
		case l.read <- struct{}{}:
		default:
		}
	}()
	for _, e := range evs {
		if more, err := fn(e); !more || err != nil {
			return err
		}
	}
	return nil
}

// append adds n events to the log without publishing them.
func (l *logStore) append(n int) []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Event
	for range n {
		e := Event{Seq: uint64(len(l.log) + 1), Type: EventIssue}
		l.log = append(l.log, e)
		out = append(out, e)
	}
	return out
}

func seqs(evs []Event) []uint64 {
	out := make([]uint64, len(evs))
	for i, e := range evs {
		out[i] = e.Seq
	}
	return out
}

func TestHub_Next(t *testing.T) {
	ev := func(seqs ...uint64) []Event {
		var out []Event
		for _, s := range seqs {
			out = append(out, Event{Seq: s})
		}
		return out
	}
	tests := []struct {
		name      string
		published [][]Event
		cursor    uint64
		live      []uint64
		gap       bool
		evicted   uint64
	}{
		{"Empty", nil, 0, nil, false, 0},
		{"InOrder", [][]Event{ev(1, 2), ev(3)}, 0, []uint64{1, 2, 3}, false, 0},
		{"FromCursor", [][]Event{ev(1, 2, 3)}, 2, []uint64{3}, false, 0},
		{"CaughtUp", [][]Event{ev(1, 2, 3)}, 3, nil, false, 0},
		{"AheadOfFeed", [][]Event{ev(1)}, 7, nil, false, 0},
		{"OutOfOrderUpTo", [][]Event{ev(1), ev(3)}, 0, []uint64{1}, false, 0},
		{"OutOfOrderGap", [][]Event{ev(1), ev(3)}, 1, nil, true, 0},
		{"Late", [][]Event{ev(1), ev(3), ev(2)}, 1, []uint64{2, 3}, false, 0},
		{"Batch", [][]Event{ev(seqRange(1, followBatch+5)...)}, 0, seqRange(1, followBatch), false, 0},
		{"Evicted", [][]Event{ev(seqRange(1, LiveFeedSize+10)...)}, 3, nil, true, 7},
		{"TooLate", [][]Event{ev(seqRange(1, LiveFeedSize+6)...), ev(5)}, LiveFeedSize + 4, []uint64{LiveFeedSize + 5, LiveFeedSize + 6}, false, 0},
		{"EvictedEdge", [][]Event{ev(seqRange(1, LiveFeedSize+10)...)}, 10, seqRange(11, 10+followBatch), false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &core{}
			for _, evs := range tt.published {
				s.publish(evs)
			}
			live, wake, gap, evicted := s.events.next(tt.cursor)
			if !slices.Equal(seqs(live), tt.live) || gap != tt.gap || evicted != tt.evicted {
				t.Fatalf("next(%d) = %v, gap %v, evicted %d; want %v, %v, %d", tt.cursor, seqs(live), gap, evicted, tt.live, tt.gap, tt.evicted)
			}
			if (wake == nil) != (len(live) > 0) {
				t.Fatalf("wake = %v with %d live events", wake, len(live))
			}
		})
	}
}

func seqRange(from, to uint64) []uint64 {
	var out []uint64
	for s := from; s <= to; s++ {
		out = append(out, s)
	}
	return out
}

// followSeqs runs s.Follow from the start until the test ends, and returns
// a check that the next sequence numbers it delivers are want.
func followSeqs(t *testing.T, s *Service) (expect func(want ...uint64)) {
	got := make(chan uint64, 64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- s.Audit().Follow(ctx, 0, EventFilter{}, func(evs []Event) error {
			for _, e := range evs {
				got <- e.Seq
			}
			return nil
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Follow = %v", err)
		}
	})
	return func(want ...uint64) {
		t.Helper()
		for _, w := range want {
			select {
			case seq := <-got:
				if seq != w {
					t.Fatalf("got seq %d, want %d", seq, w)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("no seq %d", w)
			}
		}
	}
}

// TestFollow_OutOfOrder drives the feed by hand: events published out of
// order, or never, are read from the log; a published event the log does
// not hold yet makes the follower wait, not spin.
func TestFollow_OutOfOrder(t *testing.T) {
	ls := &logStore{read: make(chan struct{}, 1)}
	s := &Service{&core{store: ls, metrics: nopMetrics{}}}
	expect := followSeqs(t, s)
	s.publish(ls.append(1))
	expect(1)
	e := ls.append(2) // 2 and 3 committed together; 3's caller resumes first
	s.publish(e[1:])
	expect(2, 3)
	s.publish(e[:1]) // late: handled already
	ls.append(1)     // 4: durable, never published
	s.publish(ls.append(1))
	expect(4, 5)

	// 7 is published before the log holds 6 and 7 (a store breaking its
	// contract): one read finds nothing, then the follower waits.
	drain(ls.read)
	s.publish([]Event{{Seq: 7, Type: EventIssue}})
	select {
	case <-ls.read:
	case <-time.After(10 * time.Second):
		t.Fatal("the gap was not read from the log")
	}
	ls.mu.Lock()
	before := ls.reads
	ls.mu.Unlock()
	s.publish(ls.append(2)[:1])
	expect(6, 7)
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.reads > before+2 {
		t.Fatalf("%d reads of the log while waiting for it; the follower spins", ls.reads-before)
	}
}

// drain empties a buffered channel of tokens.
func drain(ch chan struct{}) {
	for len(ch) > 0 {
		<-ch
	}
}
