package broker

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
)

// EventFilter selects audit events for a subscriber; zero fields match
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

// SubscriberBuffer is how many events a subscriber may fall behind before
// events are dropped for it.
const SubscriberBuffer = 256

// EventDropCounter is an optional extension of Metrics: a Metrics that
// implements it is told of every event dropped for a slow subscriber.
type EventDropCounter interface {
	EventDropped()
}

// Subscribe returns a channel of the audit events that f matches, as they
// are appended, and a function that ends the subscription and closes the
// channel. Events arrive after they are durable, in the order their writes
// completed — which, for writes committed in one group, may differ from
// their sequence order.
//
// Publishing never waits for a subscriber: when a subscriber's buffer
// (SubscriberBuffer events) is full, the event is dropped for it and
// counted (EventsDropped, and EventDropCounter when the Metrics implements
// it). A subscriber that must see every event fills the gaps it finds in
// the sequence numbers from the audit log (AuditEvents).
func (s *Service) Subscribe(f EventFilter) (<-chan Event, func()) {
	h := &s.events
	sub := &subscriber{filter: f, ch: make(chan Event, SubscriberBuffer)}
	h.mu.Lock()
	if h.subs == nil {
		h.subs = map[*subscriber]struct{}{}
	}
	h.subs[sub] = struct{}{}
	h.open.Add(1)
	h.mu.Unlock()
	var once sync.Once
	return sub.ch, func() {
		once.Do(func() {
			h.mu.Lock()
			delete(h.subs, sub)
			close(sub.ch)
			h.open.Add(-1)
			h.mu.Unlock()
		})
	}
}

// EventsDropped is the number of events dropped for slow subscribers since
// the Service started.
func (s *Service) EventsDropped() uint64 { return s.events.dropped.Load() }

// AuditEvents calls fn for each audit event with Seq > after, in order,
// until fn returns false or an error. fn runs inside a read of the store:
// it must not block (collect, then send). Errors: EUNAVAILABLE, or fn's
// error.
func (s *Service) AuditEvents(ctx context.Context, after uint64, fn func(Event) (bool, error)) error {
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

// LastAuditSeq is the sequence number of the newest audit event, 0 when
// there is none. Errors: EUNAVAILABLE.
func (s *Service) LastAuditSeq(ctx context.Context) (uint64, error) {
	e, err := s.store.LastEvent(ctx)
	if err != nil {
		return 0, unavailable("the audit log", err)
	}
	if e == nil {
		return 0, nil
	}
	return e.Seq, nil
}

// publish hands events that were just made durable to the subscribers.
// It is called by apply and never blocks.
func (s *Service) publish(events []Event) {
	h := &s.events
	if h.open.Load() == 0 || len(events) == 0 {
		return
	}
	h.mu.RLock()
	defer h.mu.RUnlock()
	for sub := range h.subs {
		for _, e := range events {
			if !sub.filter.Match(e) {
				continue
			}
			select {
			case sub.ch <- e:
			default:
				h.dropped.Add(1)
				if m, ok := s.metrics.(EventDropCounter); ok {
					m.EventDropped()
				}
			}
		}
	}
}

type subscriber struct {
	filter EventFilter
	ch     chan Event
}

// hub fans events out to one Service's subscribers.
type hub struct {
	mu      sync.RWMutex // publish holds it shared; (un)subscribe exclusively, so no send races a close
	subs    map[*subscriber]struct{}
	open    atomic.Int64 // len(subs), read without the lock: publish's fast path
	dropped atomic.Uint64
}
