package broker

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"time"
)

// OutcomeCoalesced is the outcome of an event that stands for several
// refusals: Details["count"] of them, of one caller for one reason,
// between Details["from"] and Details["until"], written one by one no
// further.
const OutcomeCoalesced = "coalesced"

// coalescer bounds what repeated refusals cost the audit log. Within a
// window, the first `after` refusals of one caller, of one type and first
// reason, are written as they come; the rest are only counted, and when
// the window ends one event with the count stands for them. A caller
// refused now and then is audited exactly as before; a flood writes a
// few events per window.
type coalescer struct {
	window time.Duration
	after  int

	mu      sync.Mutex
	m       map[coalesceKey]*coalesced
	pending []Event // summaries of windows that ended, for due
}

type coalesceKey struct {
	actor, reason string
	typ           EventType
}

type coalesced struct {
	from    time.Time
	seen    int   // refusals in the window
	counted int   // of them not written
	last    Event // the latest counted, as the summary's template
}

func newCoalescer(window time.Duration, after int) *coalescer {
	return &coalescer{window: window, after: after, m: map[coalesceKey]*coalesced{}}
}

// admit says whether ev, a refusal at now, is written now; when it is
// not, it is counted into its window's summary.
func (c *coalescer) admit(ev Event, now time.Time) bool {
	k := coalesceKey{actor: ev.Actor, typ: ev.Type}
	if len(ev.Reasons) > 0 {
		k.reason, _, _ = strings.Cut(ev.Reasons[0], ":")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	w := c.m[k]
	if w != nil && now.Sub(w.from) >= c.window {
		c.close(k, w)
		w = nil
	}
	if w == nil {
		w = &coalesced{from: now}
		c.m[k] = w
	}
	w.seen++
	if w.seen <= c.after {
		return true
	}
	w.counted++
	w.last = ev
	return false
}

// due returns the summaries of the windows that ended by now and forgets
// those windows.
func (c *coalescer) due(now time.Time) []Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, w := range c.m {
		if now.Sub(w.from) >= c.window {
			c.close(k, w)
		}
	}
	out := c.pending
	c.pending = nil
	return out
}

// close ends k's window w, keeping its summary when it counted any.
func (c *coalescer) close(k coalesceKey, w *coalesced) {
	delete(c.m, k)
	if w.counted == 0 {
		return
	}
	ev := w.last
	ev.Seq, ev.Time, ev.Outcome = 0, time.Time{}, OutcomeCoalesced
	ev.Details = map[string]string{"count": strconv.Itoa(w.counted), "from": w.from.UTC().Format(time.RFC3339Nano),
		"until": w.from.Add(c.window).UTC().Format(time.RFC3339Nano)}
	if e := w.last.Details["endpoint"]; e != "" {
		ev.Details["endpoint"] = e
	}
	c.pending = append(c.pending, ev)
}

// auditRefusal writes a refusal's event unless the coalescer counts it.
func (s *core) auditRefusal(ctx context.Context, ev Event) error {
	if !s.coalesce.admit(ev, s.now()) {
		return nil
	}
	return s.audit(ctx, ev)
}

// flushCoalesced writes the summaries of ended windows (all of them when
// final, as latch stops).
func (s *core) flushCoalesced(ctx context.Context, final bool) {
	now := s.now()
	if final {
		now = now.Add(s.coalesce.window)
	}
	if evs := s.coalesce.due(now); len(evs) > 0 {
		if err := s.audit(ctx, evs...); err != nil {
			s.log.Error("audit coalesced refusals", "events", len(evs), "err", err)
		}
	}
}
