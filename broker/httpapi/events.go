package httpapi

import (
	"bytes"
	"context"
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

// sseWriteTimeout bounds one write to an event stream: a client that
// stops reading is dropped instead of holding a goroutine forever.
const sseWriteTimeout = 30 * time.Second

// events streams audit events as Server-Sent Events: "event: <type>",
// "id: <seq>" and "data: <api.Event JSON>", with comment lines as
// heartbeats. Without
// after (or Last-Event-ID) the stream starts at the newest event; with
// it, the events after that sequence number are replayed first. The
// Service's follower (Audit.Follow) makes the stream complete and in
// sequence order however slowly the client reads; a client that
// reconnects with the last id it got misses nothing either.
func (h *Handler) events(c *call) error {
	q, err := query(c, "agent", "type", "after")
	if err != nil {
		return err
	}
	f, err := eventFilter(q["agent"], q["type"])
	if err != nil {
		return err
	}
	after := q["after"]
	if after == "" {
		after = c.r.Header.Get("Last-Event-ID")
	}
	cursor, err := seqParam("after", after)
	if err != nil {
		return err
	}
	release, err := h.streams.take(c.who.id)
	if err != nil {
		return err
	}
	defer release()
	if after == "" {
		if cursor, err = h.svc.Audit().LastSeq(c.r.Context()); err != nil {
			return err
		}
	}
	s := &sseStream{c: c, rc: http.NewResponseController(c.w)}
	hdr := c.w.Header()
	hdr.Set("Content-Type", "text/event-stream")
	hdr.Set("X-Accel-Buffering", "no")
	c.w.WriteHeader(http.StatusOK)
	s.buf.WriteString(": latch audit events\n\n")
	if err := s.flush(); err != nil {
		return nil
	}
	return s.serve(h, cursor, f)
}

// sseStream writes one event stream.
type sseStream struct {
	c   *call
	rc  *http.ResponseController
	buf bytes.Buffer
}

// serve follows the audit events after cursor in a goroutine and writes
// them, with a heartbeat every h.heartbeat, until the client leaves or a
// write fails. Only this goroutine writes to the client; the follower
// waits for each batch to be written before it looks for the next, so a
// slow client holds back only its own stream.
func (s *sseStream) serve(h *Handler, cursor uint64, f broker.EventFilter) error {
	ctx, cancel := context.WithCancel(s.c.r.Context())
	batches := make(chan []broker.Event)
	followed := make(chan error, 1)
	go func() {
		followed <- h.svc.Audit().Follow(ctx, cursor, f, func(evs []broker.Event) error {
			select {
			case batches <- evs:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	defer func() { cancel(); <-followed }()
	tick := time.NewTicker(h.heartbeat)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-followed:
			followed <- err // for the deferred wait
			return s.fail(err)
		case <-tick.C:
			s.buf.WriteString(": keepalive\n\n")
		case evs := <-batches:
			for _, e := range evs {
				b, _ := json.Marshal(EventOut(e)) // strings, times, integers: cannot fail
				// The type as the SSE event name, for
				// EventSource.addEventListener("issue", …); no
				// event type is "error", the stream's own.
				fmt.Fprintf(&s.buf, "event: %s\nid: %d\ndata: %s\n\n", e.Type, e.Seq, b)
			}
		}
		if err := s.flush(); err != nil {
			return nil // the client is gone
		}
	}
}

// flush writes what is buffered, within sseWriteTimeout.
func (s *sseStream) flush() error {
	if s.buf.Len() == 0 {
		return nil
	}
	_ = s.rc.SetWriteDeadline(time.Now().Add(sseWriteTimeout))
	if _, err := s.c.w.Write(s.buf.Bytes()); err != nil {
		return err
	}
	s.buf.Reset()
	return s.rc.Flush()
}

// fail ends the stream with an error event, the headers being sent: the
// client resumes from the last id it got. The end of the request is no
// failure.
func (s *sseStream) fail(err error) error {
	ctx := s.c.r.Context()
	if ctx.Err() != nil || errors.Is(err, ctx.Err()) {
		return nil
	}
	body, _ := errorBody(err, s.c.requestID)
	b, _ := json.Marshal(api.ErrorResponse{Error: body})
	s.buf.Reset()
	fmt.Fprintf(&s.buf, "event: error\ndata: %s\n\n", b)
	_ = s.flush()
	return err
}
