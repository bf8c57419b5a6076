package broker

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"time"
)

// EventFilter selects audit events for a follower; zero fields match
// everything.
type EventFilter struct {
	// Agent matches events whose actor or subject is this SPIFFE ID.
	Agent string
	// Types, when not empty, are the event types wanted.
	Types []EventType
}

// Match reports whether e passes the filter.
func (f EventFilter) Match(e Event) bool {
	if f.Agent != "" && e.Actor != f.Agent && e.Subject != f.Agent {
		return false
	}
	return len(f.Types) == 0 || slices.Contains(f.Types, e.Type)
}

// LiveFeedSize is how many of the newest events the live feed keeps in
// memory. A follower further behind than that reads the audit log
// instead: falling behind costs reads, never events.
const LiveFeedSize = 1024

// followBatch bounds the events handed to a follower's fn at once, and
// the events one read of the audit log collects: the read ends before fn
// runs, so a slow consumer never holds the store.
const followBatch = 256

// followPoll is how often a follower that sees nothing new reads the
// audit log anyway. An event can be durable without ever reaching the
// live feed — its write timed out in apply after the store took it — and
// then nothing later would reveal the gap.
const followPoll = time.Second

// EventDropCounter is an optional extension of Metrics: a Metrics that
// implements it is told of every event a follower fell too far behind to
// take from the live feed (LiveFeedSize), and so read from the audit log.
// Such an event is delivered all the same; the count says that a
// consumer is slow.
type EventDropCounter interface {
	EventDropped()
}

// Follow calls fn with the audit events after the sequence number after
// that f matches — every one, once, in increasing Seq — and then with the
// new ones as they become durable, until ctx ends or fn fails. Every
// consumer of the live event stream (the SSE stream, the webhook outbox,
// auto-pause) follows it this way: a consumer keeps the Seq of the last
// event it handled and resumes from it, across reconnects and restarts.
//
// New events come from the live feed, which publishing fills without
// ever waiting for a follower. The feed may hold the events of one group
// commit out of Seq order, and a slow follower may find the event it
// needs already overwritten; either gap is read from the audit log,
// which holds every event before the newest one published.
//
// fn gets one or more events (at most followBatch) and may keep the
// slice; the events themselves are shared and must not be modified. fn
// runs outside any lock or store read, so it may block or write to the
// Service. Follow returns ctx's error, fn's error, or an EUNAVAILABLE
// error when the audit log cannot be read; after any of them the caller
// resumes from the last event it handled.
func (s Audit) Follow(ctx context.Context, after uint64, f EventFilter, fn func([]Event) error) error {
	fl := &follower{s: s.core, cursor: after, filter: f, fn: fn}
	poll := time.NewTicker(followPoll)
	defer poll.Stop()
	fromLog := true // whatever was written before this call
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if fromLog {
			full, err := fl.readLog(ctx)
			if err != nil {
				return err
			}
			if full {
				continue // the log has more: read on before looking live
			}
		}
		live, wake, gap, evicted := s.events.next(fl.cursor)
		switch {
		case len(live) > 0:
			fl.live = true
			if err := fl.deliver(live); err != nil {
				return err
			}
			fromLog = false
		case gap && !fromLog:
			fl.fellBehind(evicted)
			fromLog = true
		default:
			// Nothing new; or a gap the log has just been read for and
			// did not fill yet. Wait for the next publish.
			fromLog = false
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-wake:
			case <-poll.C:
				fromLog = true
			}
		}
	}
}

// follower is one Follow call's position in the stream.
type follower struct {
	s      *core
	cursor uint64 // the Seq of the last event handled, matched or not
	filter EventFilter
	fn     func([]Event) error
	live   bool // the last events came from the live feed
}

// readLog delivers the next events after the cursor from the audit log,
// one batch, and reports whether the batch was full: more may follow.
func (fl *follower) readLog(ctx context.Context) (bool, error) {
	var read []Event
	err := fl.s.store.Events(ctx, fl.cursor, func(e Event) (bool, error) {
		read = append(read, e)
		return len(read) < followBatch, nil
	})
	if err != nil {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		return false, unavailable("the audit log", err)
	}
	full := len(read) == followBatch
	if !full && len(read) > 0 && read[len(read)-1].Seq >= fl.s.events.highest() {
		// Caught up with the live edge through the log (an event read
		// before its publish): keeping up, as if it came live.
		fl.live = true
	}
	return full, fl.deliver(read)
}

// deliver moves the cursor over evs and hands fn those the filter
// matches. evs must be in Seq order; a Seq not after the cursor is one
// handled already (published late, out of order) and is skipped.
func (fl *follower) deliver(evs []Event) error {
	out := evs[:0]
	for _, e := range evs {
		if e.Seq <= fl.cursor {
			continue
		}
		fl.cursor = e.Seq
		if fl.filter.Match(e) {
			out = append(out, e)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return fl.fn(out)
}

// fellBehind counts, once per fall, the events the live feed no longer
// held for a follower that was keeping up with it. Gaps from out-of-order
// publishing, and a follower replaying the past, are not counted.
func (fl *follower) fellBehind(evicted uint64) {
	if !fl.live || evicted == 0 {
		return
	}
	fl.live = false
	if m, ok := fl.s.metrics.(EventDropCounter); ok {
		for range evicted {
			m.EventDropped()
		}
	}
}

// hub is the live feed: a ring of the newest LiveFeedSize events, by Seq,
// shared by every follower. Publishing costs the same however many
// follow, and no follower can make it wait or lose an event for another.
type hub struct {
	mu   sync.Mutex
	ring []Event // ring[seq%LiveFeedSize]; allocated at the first publish
	high uint64  // the highest Seq published
	wake chan struct{}
}

// highest is the highest Seq published.
func (h *hub) highest() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.high
}

// publish hands events that were just made durable to the live feed. It
// is called by apply after each write, with that write's events in
// commit order, and never blocks.
func (s *core) publish(events []Event) {
	if len(events) == 0 {
		return
	}
	h := &s.events
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ring == nil {
		h.ring = make([]Event, LiveFeedSize)
	}
	for _, e := range events {
		h.high = max(h.high, e.Seq)
		if e.Seq+LiveFeedSize > h.high { // else so late it would overwrite a newer event
			h.ring[e.Seq%LiveFeedSize] = e
		}
	}
	if h.wake != nil {
		close(h.wake)
		h.wake = nil
	}
}

// next returns the events after cursor that the feed holds in an unbroken
// run (at most followBatch). When it holds none it returns a channel
// closed at the next publish, and whether the feed has newer events — a
// gap, which the audit log fills — of which evicted are overwritten.
func (h *hub) next(cursor uint64) (live []Event, wake <-chan struct{}, gap bool, evicted uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for seq := cursor + 1; seq <= h.high && len(live) < followBatch; seq++ {
		e := &h.ring[seq%LiveFeedSize]
		if e.Seq != seq {
			break
		}
		live = append(live, *e)
	}
	if len(live) > 0 {
		return live, nil, false, 0
	}
	if h.wake == nil {
		h.wake = make(chan struct{})
	}
	if h.high > LiveFeedSize && cursor < h.high-LiveFeedSize {
		evicted = h.high - LiveFeedSize - cursor
	}
	return nil, h.wake, h.high > cursor, evicted
}

// Events calls fn for each audit event with Seq > after, in order,
// until fn returns false or an error: one page of the log, for the audit
// listing. fn runs inside a read of the store: it must not block
// (collect, then send). Errors: EUNAVAILABLE, or fn's error.
func (s Audit) Events(ctx context.Context, after uint64, fn func(Event) (bool, error)) error {
	var fnErr error
	err := s.store.Events(ctx, after, func(e Event) (bool, error) {
		more, err := fn(e)
		fnErr = err
		return more, err
	})
	if err != nil && fnErr == nil {
		return unavailable("the audit log", err)
	}
	return err
}

// LastSeq is the sequence number of the newest audit event, 0 when
// there is none: where a follower starts that wants only what is new.
// Errors: EUNAVAILABLE.
func (s Audit) LastSeq(ctx context.Context) (uint64, error) {
	e, err := s.store.LastEvent(ctx)
	if err != nil {
		return 0, unavailable("the audit log", err)
	}
	if e == nil {
		return 0, nil
	}
	return e.Seq, nil
}

// Checkpoint records a signed checkpoint of the chain (see
// broker/checkpoint): that record seq, with hash, was in the chain when it
// was signed. Errors: EUNAVAILABLE.
func (s Audit) Checkpoint(ctx context.Context, seq uint64, hash, signed string) error {
	return s.audit(ctx, Event{Type: EventCheckpoint, Actor: "latch", Outcome: "signed",
		Details: map[string]string{"seq": strconv.FormatUint(seq, 10), "hash": hash, "jws": signed}})
}
