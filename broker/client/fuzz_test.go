package client

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/latchbroker/latch/broker/api"
)

// Seeds live in testdata/fuzz/<FuzzName>/. Run one target with, e.g.:
//
//	go test -run '^$' -fuzz '^FuzzEventStream$' -fuzztime 60s ./broker/client/

// FuzzEventStream reads arbitrary bytes as the body of GET /v1/events.
// Next must never panic or loop (each call consumes at least a line), and
// what each call returns (event, error event, refusal, end) and LastSeq
// after it must match a plain line-by-line reading of the stream
// (sseModel).
func FuzzEventStream(f *testing.F) {
	ev := `{"seq":7,"time":"2026-11-30T02:00:00Z","type":"issue","actor":"spiffe://example.org/agent/a","task":"read","lease":"l-1","outcome":"allow","details":{"ttl":"5m"},"prev_hash":"ab","hash":"cd"}`
	for _, s := range []string{
		"",
		": latch audit events\n\n",
		": latch audit events\n\nid: 7\ndata: " + ev + "\n\n: keepalive\n\n",
		"id: 7\r\ndata: " + ev + "\r\n\r\n",
		"data: " + ev + "\n\n",          // no id: LastSeq from the event's seq
		"id: 9\ndata: {}\n\n",           // an id with an empty event
		"id: x\ndata: {\"seq\":3}\n\n",  // an id that is not a number
		"id:5\ndata:{\"seq\":5}\n\n",    // no space after the colon
		"data: {\"seq\":\ndata: 4}\n\n", // data over two lines
		"data\n\n",                      // a field without a colon: empty data
		"retry: 1000\nfoo: bar\ndata: {}\n\n",
		"event: error\ndata: {\"error\":{\"code\":\"unavailable\",\"message\":\"store closed\",\"reasons\":[],\"request_id\":\"r1\"}}\n\n",
		"event: error\ndata: {\"error\":{\"code\":\"no_such_code\",\"message\":\"m\",\"reasons\":[\"a\"]}}\n\n",
		"event: error\ndata: not json\n\n",
		"data: not json\n\ndata: {\"seq\":2}\n\n",
		"event: ping\ndata: {\"seq\":1}\n\n",
		"id: 3\n\ndata: {\"seq\":0}\n\n", // an id without data is kept until the next event
		"data: {\"seq\":1}\n",            // ends before the blank line
		"data: {\"seq\":1}",              // ends inside a line
		"data: {\"seq\":1}\n\n\n\n:\n\n",
		"data: \"\xff\"\n\n",
		": " + strings.Repeat("x", 64<<10) + "\n\n", // a line longer than the buffer
		": " + strings.Repeat("x", 64<<10-4) + "\n\ndata: {}\n\n",
		"data: {\"seq\":18446744073709551615}\n\n",
		"id: 18446744073709551616\ndata: {\"seq\":1}\n\n",
	} {
		f.Add([]byte(s), uint64(0))
	}
	f.Add([]byte("data: {}\n\n"), uint64(42)) // opened with After: 42
	f.Fuzz(func(t *testing.T, data []byte, after uint64) {
		s := newTestStream(data, after)
		m := &sseModel{data: data, last: after}
		for i := 0; ; i++ {
			if i > len(data)+1 {
				t.Fatalf("Next called %d times on %d bytes without ending", i, len(data))
			}
			e, err := s.Next()
			want, wantErr := m.next()
			if !sameErr(err, wantErr) {
				t.Fatalf("call %d: Next error %v, want %v", i, err, wantErr)
			}
			if !reflect.DeepEqual(e, want) {
				t.Fatalf("call %d: Next = %+v, want %+v", i, e, want)
			}
			if s.LastSeq() != m.last {
				t.Fatalf("call %d: LastSeq = %d, want %d", i, s.LastSeq(), m.last)
			}
			if err == io.EOF {
				if e, err := s.Next(); err != io.EOF || !reflect.DeepEqual(e, api.Event{}) {
					t.Fatalf("Next after io.EOF = %+v, %v", e, err)
				}
				return
			}
			if err != nil && !isDispatchErr(err) {
				return // the stream is broken: a caller reconnects
			}
		}
	})
}

// FuzzResponseError builds the *Error of arbitrary non-2xx responses:
// no panic; a JSON error body with a code gives its fields; anything else
// gives the body, trimmed and cut to 200 bytes of valid UTF-8, or the
// status text; Retry-After, when a whole number of seconds, wins over
// the body's retry_after.
func FuzzResponseError(f *testing.F) {
	f.Add(429, []byte(`{"error":{"code":"limit","message":"rate limited","reasons":["rate"],"retry_after":30,"request_id":"r1"}}`), "12", "hdr-1")
	f.Add(403, []byte(`{"error":{"code":"forbidden","message":"denied","reasons":["frozen:window"],"next_allowed_at":"2026-12-01T00:00:00Z"}}`), "", "")
	f.Add(500, []byte(`{"error":{"code":"internal","message":"internal error","reasons":[]}}`), "", "req-9")
	f.Add(502, []byte("<html>Bad Gateway</html>\n"), "", "")
	f.Add(503, []byte(""), "-1", "")
	f.Add(599, []byte("  "), "x", "")
	f.Add(400, []byte(`{"error":{"code":""}}`), "", "")
	f.Add(400, []byte(`{"error":{"code":"invalid","retry_after":-5}}`), "", "")
	f.Add(413, []byte(strings.Repeat("é", 150)), "", "")
	f.Add(404, []byte(strings.Repeat("x", 199)+"\xff\xfe"), "", "")
	f.Add(429, []byte(`{"error":{"code":"limit","retry_after":9223372036}}`), "9223372036", "")
	f.Fuzz(func(t *testing.T, status int, body []byte, retryAfter, requestID string) {
		resp := &http.Response{StatusCode: status, Header: http.Header{}, Body: io.NopCloser(bytes.NewReader(body))}
		if retryAfter != "" {
			resp.Header.Set("Retry-After", retryAfter)
		}
		if requestID != "" {
			resp.Header.Set("X-Request-Id", requestID)
		}
		err := responseError(resp)
		e, ok := err.(*Error)
		if !ok {
			t.Fatalf("responseError = %T %v", err, err)
		}
		if e.Status != status {
			t.Fatalf("Status = %d, want %d", e.Status, status)
		}
		var want Error
		var doc api.ErrorResponse
		b := body[:min(len(body), 64<<10)]
		if json.Unmarshal(b, &doc) == nil && doc.Error.Code != "" {
			want = Error{Code: doc.Error.Code, Message: doc.Error.Message, Reasons: doc.Error.Reasons,
				NextAllowedAt: doc.Error.NextAllowedAt, RequestID: resp.Header.Get("X-Request-Id")}
			if doc.Error.RequestID != "" {
				want.RequestID = doc.Error.RequestID
			}
			want.RetryAfter = clampedRetryAfter(int64(doc.Error.RetryAfter))
		} else {
			msg := strings.TrimSpace(string(b))
			if len(msg) > 200 {
				// Cut to 200 bytes, invalid UTF-8 (the cut rune
				// included) dropped.
				msg = strings.ToValidUTF8(msg[:200], "") + "…"
				if !utf8.ValidString(e.Message) || len(e.Message) > 200+len("…") {
					t.Fatalf("long body gave message %q", e.Message)
				}
			} else if msg == "" {
				msg = http.StatusText(status)
			}
			want = Error{Message: msg, RequestID: resp.Header.Get("X-Request-Id")}
		}
		if s, err := strconv.ParseInt(resp.Header.Get("Retry-After"), 10, 64); err == nil && s >= 0 {
			want.RetryAfter = clampedRetryAfter(s)
		}
		want.Status = status
		if !reflect.DeepEqual(*e, want) {
			t.Fatalf("responseError = %+v\nwant %+v", *e, want)
		}
		if e.Error() == "" {
			t.Fatal("empty Error()")
		}
	})
}

// newTestStream builds the EventStream that Client.Events builds for a
// response body.
func newTestStream(data []byte, after uint64) *EventStream {
	body := io.NopCloser(bytes.NewReader(data))
	return &EventStream{body: body, r: bufio.NewReaderSize(body, 64<<10), last: after}
}

// isDispatchErr reports whether err ends one event, after which the
// stream can go on: an error event or an undecodable event.
func isDispatchErr(err error) bool {
	var e *Error
	return errors.As(err, &e) || strings.Contains(err.Error(), "undecodable")
}

func sameErr(got, want error) bool {
	if got == nil || want == nil {
		return got == want
	}
	var g, w *Error
	if errors.As(want, &w) {
		return errors.As(got, &g) && reflect.DeepEqual(g, w)
	}
	if want == io.EOF {
		return got == io.EOF
	}
	if errors.Is(want, io.ErrUnexpectedEOF) {
		return errors.Is(got, io.ErrUnexpectedEOF) && got.Error() == want.Error()
	}
	// Undecodable events: the same message, json's error included.
	return got.Error() == want.Error()
}

// sseModel reads a text/event-stream body the plain way, line by line,
// as EventStream should: lines end in "\n" or "\r\n" and hold at most 64
// KiB with their end; a blank line ends an event when it has data (an
// event name or id without data is kept for the next one, as latch's
// server never sends them alone); ":" starts a comment; unknown fields
// are ignored. One event's lines, from the blank line before it, may
// hold 1 MiB; comments and heartbeats between events are not part of an
// event.
type sseModel struct {
	data []byte
	pos  int
	last uint64
}

func (m *sseModel) next() (api.Event, error) {
	var (
		name, id string
		buf      []byte
		has      bool
		size     int
	)
	for {
		rest := m.data[m.pos:]
		n := bytes.IndexByte(rest, '\n')
		switch {
		case n < 0 && len(rest) >= 64<<10, n >= 64<<10:
			return api.Event{}, errors.New("client: event stream: a line is longer than 64 KiB")
		case n < 0 && len(rest) == 0:
			return api.Event{}, io.EOF
		case n < 0:
			m.pos = len(m.data)
			return api.Event{}, errors.New("client: event stream: " + io.ErrUnexpectedEOF.Error())
		}
		line := rest[:n]
		m.pos += n + 1
		if len(line) > 0 && line[len(line)-1] == '\r' {
			line = line[:len(line)-1]
		}
		if size += len(line); size > maxEventBytes {
			return api.Event{}, errors.New("client: event stream: an event is larger than 1 MiB")
		}
		if len(line) == 0 {
			if !has {
				size = 0
				continue
			}
			return m.dispatch(name, id, buf)
		}
		if line[0] == ':' {
			continue
		}
		field, value := string(line), ""
		if i := bytes.IndexByte(line, ':'); i >= 0 {
			field, value = string(line[:i]), strings.TrimPrefix(string(line[i+1:]), " ")
		}
		switch field {
		case "data":
			if has {
				buf = append(buf, '\n')
			}
			buf, has = append(buf, value...), true
		case "event":
			name = value
		case "id":
			id = value
		}
	}
}

func (m *sseModel) dispatch(name, id string, data []byte) (api.Event, error) {
	if name == "error" {
		var body api.ErrorResponse
		if err := json.Unmarshal(data, &body); err != nil {
			return api.Event{}, errors.New("client: event stream: undecodable error event: " + err.Error())
		}
		b := body.Error
		return api.Event{}, &Error{Status: api.Status(b.Code), Code: b.Code, Message: b.Message, Reasons: b.Reasons, RequestID: b.RequestID}
	}
	var e api.Event
	if err := json.Unmarshal(data, &e); err != nil {
		return api.Event{}, errors.New("client: event stream: undecodable event: " + err.Error())
	}
	if n, err := strconv.ParseUint(id, 10, 64); err == nil {
		m.last = n
	} else if e.Seq != 0 {
		m.last = e.Seq
	}
	return e, nil
}

// clampedRetryAfter is the reference for a server's retry-after seconds:
// negative is none, and at most a day.
func clampedRetryAfter(seconds int64) time.Duration {
	switch {
	case seconds <= 0:
		return 0
	case seconds >= 24*60*60:
		return 24 * time.Hour
	}
	return time.Duration(seconds) * time.Second
}

// TestEventStream_HeartbeatsDoNotAddUp: heartbeats between events are not
// counted toward the next event's size limit (they once were, so a quiet
// filtered stream failed after about 16 days of keepalives).
func TestEventStream_HeartbeatsDoNotAddUp(t *testing.T) {
	var b strings.Builder
	comment := ": " + strings.Repeat("k", 60<<10) + "\n\n"
	for range 20 { // 1.2 MiB of heartbeats
		b.WriteString(comment)
	}
	b.WriteString("id: 8\ndata: {\"seq\":8,\"type\":\"issue\"}\n\n")
	s := newTestStream([]byte(b.String()), 0)
	e, err := s.Next()
	if err != nil || e.Seq != 8 || e.Type != "issue" {
		t.Fatalf("Next = %+v, %v; want event 8", e, err)
	}
}
