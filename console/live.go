package console

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/httpapi"
)

// liveBacklog is how many recent events the live page starts with.
const liveBacklog = 50

// maxStreams bounds the console's open event streams.
const maxStreams = 64

// live is the page of the event stream; its script follows /events.
func (c *Console) live(req *request) error {
	q := req.r.URL.Query()
	c.render(req.w, http.StatusOK, "live", c.page(req, "live", map[string]any{
		"Agent": q.Get("agent"), "Task": q.Get("task"), "Type": q.Get("type"), "Types": broker.EventTypes}))
	return nil
}

// events streams the audit events as Server-Sent Events (unnamed: the
// page takes each in onmessage), starting with the last liveBacklog, filtered by agent,
// task and type.
func (c *Console) events(req *request) error {
	q := req.r.URL.Query()
	f := broker.EventFilter{Agent: q.Get("agent")}
	if t := q.Get("type"); t != "" {
		if !slices.Contains(broker.EventTypes, broker.EventType(t)) {
			return broker.Errorf(broker.EINVALID, "type %q is not an audit event type", clip(t, 40))
		}
		f.Types = []broker.EventType{broker.EventType(t)}
	}
	task := q.Get("task")
	select {
	case c.streams <- struct{}{}:
		defer func() { <-c.streams }()
	default:
		return broker.Errorf(broker.ELIMIT, "%d live views are open, the most the console serves", maxStreams)
	}
	last, err := c.svc.Audit().LastSeq(req.ctx)
	if err != nil {
		return err
	}
	rc := http.NewResponseController(req.w)
	req.w.Header().Set("Content-Type", "text/event-stream")
	req.w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return nil
	}
	after := last - min(last, liveBacklog)
	err = c.svc.Audit().Follow(req.r.Context(), after, f, func(evs []broker.Event) error {
		for _, e := range evs {
			if task != "" && e.Task != task {
				continue
			}
			// The page's script puts every value in with textContent,
			// never as markup.
			b, err := json.Marshal(httpapi.EventOut(e))
			if err != nil {
				return err
			}
			fmt.Fprintf(req.w, "id: %d\ndata: %s\n\n", e.Seq, b)
		}
		_ = rc.SetWriteDeadline(time.Now().Add(30 * time.Second))
		return rc.Flush()
	})
	if err != nil && req.r.Context().Err() == nil {
		c.log.Warn("console live view ended", "err", err)
	}
	return nil
}
