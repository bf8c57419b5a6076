package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/api"
)

// eventFilter parses the agent= and type= (comma-separated) parameters.
func eventFilter(agent, types string) (broker.EventFilter, error) {
	f := broker.EventFilter{Agent: agent}
	if agent != "" {
		if err := agentID("agent", agent); err != nil {
			return f, err
		}
	}
	if types == "" {
		return f, nil
	}
	for t := range strings.SplitSeq(types, ",") {
		et := broker.EventType(strings.TrimSpace(t))
		if !slices.Contains(broker.EventTypes, et) {
			return f, invalid(reasonBadQuery, "type=%q is not an audit event type; known: %v", truncate(string(et), 32), broker.EventTypes)
		}
		f.Types = append(f.Types, et)
	}
	return f, nil
}

// sseBatch is how many events one catch-up reads from the audit log
// before sending them: the read transaction must end before the network
// is written to, so a slow client never holds the store.
const sseBatch = 256

// sseWriteTimeout bounds one write to an event stream: a client that
// stops reading is dropped instead of holding a goroutine forever.
const sseWriteTimeout = 30 * time.Second

// events streams audit events as Server-Sent Events: "id: <seq>" and
// "data: <api.Event JSON>", with comment lines as heartbeats. Without
// after (or Last-Event-ID) the stream starts at the newest event; with
// it, the events after that sequence number are replayed first.
//
// Events arrive from the Service's live feed, which may drop events for
// a slow reader and may deliver the writes of one group commit out of
// order. The stream is nonetheless complete and in sequence order: it
// sends the next event straight from the feed only when its sequence
// number follows the last one seen, and otherwise reads the gap from the
// audit log.
func (h *Handler) events(c *call) error {
	q, err := query(c, "agent", "type", "after")
	if err != nil {
		return err
	}
	f, err := eventFilter(q["agent"], q["type"])
	if err != nil {
		return err
	}
	after, replay := q["after"], true
	if after == "" {
		after = c.r.Header.Get("Last-Event-ID")
	}
	if after == "" {
		replay = false
	}
	cursor, err := seqParam("after", after)
	if err != nil {
		return err
	}
	if n := h.streams.Add(1); n > int64(h.maxStreams) {
		h.streams.Add(-1)
		return &broker.Error{Code: broker.ELIMIT, Message: fmt.Sprintf("%d event streams are open, the most this server serves", h.maxStreams),
			Reasons: []string{"too_many_streams"}, RetryAfter: 10 * time.Second}
	}
	defer h.streams.Add(-1)
	ctx := c.r.Context()
	feed, cancel := h.svc.Subscribe(broker.EventFilter{})
	defer cancel()
	if !replay {
		if cursor, err = h.svc.LastAuditSeq(ctx); err != nil {
			return err
		}
	}

	rc := http.NewResponseController(c.w)
	hdr := c.w.Header()
	hdr.Set("Content-Type", "text/event-stream")
	hdr.Set("X-Accel-Buffering", "no")
	c.w.WriteHeader(http.StatusOK)
	var buf bytes.Buffer
	flush := func() error {
		if buf.Len() == 0 {
			return nil
		}
		_ = rc.SetWriteDeadline(time.Now().Add(sseWriteTimeout))
		if _, err := c.w.Write(buf.Bytes()); err != nil {
			return err
		}
		buf.Reset()
		return rc.Flush()
	}
	add := func(e broker.Event) {
		cursor = e.Seq
		if !f.Match(e) {
			return
		}
		b, _ := json.Marshal(eventOut(e)) // strings, times, integers: cannot fail
		fmt.Fprintf(&buf, "id: %d\ndata: %s\n\n", e.Seq, b)
	}
	// catchUp sends every event after cursor from the audit log.
	catchUp := func() error {
		for {
			var batch []broker.Event
			err := h.svc.AuditEvents(ctx, cursor, func(e broker.Event) (bool, error) {
				batch = append(batch, e)
				return len(batch) < sseBatch, nil
			})
			if err != nil {
				return err
			}
			for _, e := range batch {
				add(e)
			}
			if err := flush(); err != nil {
				return err
			}
			if len(batch) < sseBatch {
				return nil
			}
		}
	}
	// fail ends the stream with an error event; headers are gone.
	fail := func(err error) error {
		if ctx.Err() != nil || errors.Is(err, ctx.Err()) {
			return nil
		}
		body, _ := errorBody(err, c.requestID)
		b, _ := json.Marshal(api.ErrorResponse{Error: body})
		buf.Reset()
		fmt.Fprintf(&buf, "event: error\ndata: %s\n\n", b)
		_ = flush()
		return err
	}

	buf.WriteString(": latch audit events\n\n")
	if replay {
		if err := catchUp(); err != nil {
			return fail(err)
		}
	} else if err := flush(); err != nil {
		return nil
	}
	tick := time.NewTicker(h.heartbeat)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			buf.WriteString(": keepalive\n\n")
			if err := catchUp(); err != nil {
				return fail(err)
			}
		case e, ok := <-feed:
			if !ok {
				return nil
			}
			gap := false
			for ok {
				switch {
				case e.Seq <= cursor:
				case e.Seq == cursor+1:
					add(e)
				default:
					gap = true
				}
				select { // take what else is waiting before writing
				case e, ok = <-feed:
				default:
					ok = false
				}
			}
			if gap {
				if err := catchUp(); err != nil {
					return fail(err)
				}
			} else if err := flush(); err != nil {
				return nil
			}
		}
	}
}
