package broker

import (
	"context"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"weak"
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
	h := s.hub(true)
	sub := &subscriber{filter: f, ch: make(chan Event, SubscriberBuffer)}
	h.mu.Lock()
	h.subs[sub] = struct{}{}
	h.mu.Unlock()
	subscriptions.Add(1)
	var once sync.Once
	return sub.ch, func() {
		once.Do(func() {
			h.mu.Lock()
			delete(h.subs, sub)
			close(sub.ch)
			h.mu.Unlock()
			subscriptions.Add(-1)
		})
	}
}

// EventsDropped is the number of events dropped for slow subscribers since
// the Service started.
func (s *Service) EventsDropped() uint64 {
	if h := s.hub(false); h != nil {
		return h.dropped.Load()
	}
	return 0
}

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
		return &Error{Code: EUNAVAILABLE, Message: "the audit log is unavailable", Err: err}
	}
	return err
}

// LastAuditSeq is the sequence number of the newest audit event, 0 when
// there is none. Errors: EUNAVAILABLE.
func (s *Service) LastAuditSeq(ctx context.Context) (uint64, error) {
	e, err := s.store.LastEvent(ctx)
	if err != nil {
		return 0, &Error{Code: EUNAVAILABLE, Message: "the audit log is unavailable", Err: err}
	}
	if e == nil {
		return 0, nil
	}
	return e.Seq, nil
}

// publish hands events that were just made durable to the subscribers.
// It is called by apply and never blocks.
func (s *Service) publish(events []Event) {
	if subscriptions.Load() == 0 || len(events) == 0 {
		return
	}
	h := s.hub(false)
	if h == nil {
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
	dropped atomic.Uint64
}

// The hubs live beside their Services rather than in them, keyed by a weak
// pointer so that a Service that is no longer used is collected and its
// hub removed.
var (
	hubs          sync.Map     // weak.Pointer[Service] → *hub
	subscriptions atomic.Int64 // open subscriptions of every Service: publish's fast path
)

func (s *Service) hub(create bool) *hub {
	key := weak.Make(s)
	if h, ok := hubs.Load(key); ok {
		return h.(*hub)
	}
	if !create {
		return nil
	}
	h, loaded := hubs.LoadOrStore(key, &hub{subs: map[*subscriber]struct{}{}})
	if !loaded {
		runtime.AddCleanup(s, func(k weak.Pointer[Service]) { hubs.Delete(k) }, key)
	}
	return h.(*hub)
}
