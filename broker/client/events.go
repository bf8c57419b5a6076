package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"

	"github.com/latchbroker/latch/broker/api"
)

// maxEventBytes bounds one Server-Sent Event.
const maxEventBytes = 1 << 20

// EventStream reads audit events from GET /v1/events.
type EventStream struct {
	body io.ReadCloser
	r    *bufio.Reader
	last uint64
}

// Events opens the live stream of audit events (viewer). With q.After set
// the events after that sequence number are replayed first; resume a
// broken stream with After: stream.LastSeq(). The stream ends when ctx
// does or Close is called.
func (c *Client) Events(ctx context.Context, q api.EventsQuery) (*EventStream, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url("/v1/events", q.Values()), nil)
	if err != nil {
		return nil, fmt.Errorf("client: GET /v1/events: %w", err)
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("client: GET /v1/events: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, responseError(resp)
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "text/event-stream" {
		resp.Body.Close()
		return nil, fmt.Errorf("client: GET /v1/events: answered with %q, not an event stream", resp.Header.Get("Content-Type"))
	}
	return &EventStream{body: resp.Body, r: bufio.NewReaderSize(resp.Body, 64<<10), last: q.After}, nil
}

// Next returns the next event. It returns io.EOF when the server ends the
// stream, an *Error when the server ends it with an error, and the
// context's error once it is done.
func (s *EventStream) Next() (api.Event, error) {
	var (
		data  []byte
		name  string
		id    string
		has   bool
		total int
	)
	for {
		line, err := s.r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return api.Event{}, errors.New("client: event stream: a line is longer than 64 KiB")
		}
		if err != nil {
			if err == io.EOF && len(line) == 0 {
				return api.Event{}, io.EOF
			}
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return api.Event{}, fmt.Errorf("client: event stream: %w", err)
		}
		line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
		if total += len(line); total > maxEventBytes {
			return api.Event{}, errors.New("client: event stream: an event is larger than 1 MiB")
		}
		if len(line) == 0 {
			if !has {
				total = 0 // comments and heartbeats only: they end here
				continue
			}
			return s.dispatch(name, id, data)
		}
		if line[0] == ':' {
			continue
		}
		field, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(field) {
		case "data":
			if has {
				data = append(data, '\n')
			}
			data, has = append(data, value...), true
		case "event":
			name = string(value)
		case "id":
			id = string(value)
		}
	}
}

func (s *EventStream) dispatch(name, id string, data []byte) (api.Event, error) {
	if name == "error" {
		var body api.ErrorResponse
		if err := json.Unmarshal(data, &body); err != nil {
			return api.Event{}, fmt.Errorf("client: event stream: undecodable error event: %w", err)
		}
		return api.Event{}, &Error{Status: api.Status(body.Error.Code), Code: body.Error.Code, Message: body.Error.Message,
			Reasons: body.Error.Reasons, RequestID: body.Error.RequestID}
	}
	var e api.Event
	if err := json.Unmarshal(data, &e); err != nil {
		return api.Event{}, fmt.Errorf("client: event stream: undecodable event: %w", err)
	}
	if n, err := strconv.ParseUint(id, 10, 64); err == nil {
		s.last = n
	} else if e.Seq != 0 {
		s.last = e.Seq
	}
	return e, nil
}

// LastSeq is the sequence number of the last event received (or the After
// the stream was opened with): pass it as After to resume.
func (s *EventStream) LastSeq() uint64 { return s.last }

// Close ends the stream.
func (s *EventStream) Close() error { return s.body.Close() }
