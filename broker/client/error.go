package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/latchbroker/latch/broker/api"
)

// Error is an error answer from latch.
type Error struct {
	// Status is the HTTP status.
	Status int
	// Code is one of the api.Code* values; empty when the answer was not
	// latch's (a proxy's error page, say).
	Code    string
	Message string
	// Reasons are stable reason codes: for a denial the policy's
	// ("frozen:billing-close", "task_not_granted"), for a 401 the kind
	// of the refused credential ("expired", "wrong_audience").
	Reasons []string
	// NextAllowedAt is when a denied request may succeed (zero if
	// unknown).
	NextAllowedAt time.Time
	// RetryAfter is how long to wait before retrying a limited request.
	RetryAfter time.Duration
	// RequestID names the request in the server's log.
	RequestID string
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "latch: %d", e.Status)
	if e.Code != "" {
		b.WriteString(" " + e.Code)
	}
	if e.Message != "" {
		b.WriteString(": " + e.Message)
	}
	if len(e.Reasons) > 0 {
		b.WriteString(" (" + strings.Join(e.Reasons, ", ") + ")")
	}
	// A freeze's message names its next allowed time already; say it once.
	next := "next allowed at " + e.NextAllowedAt.Format(time.RFC3339)
	if !e.NextAllowedAt.IsZero() && !strings.Contains(e.Message, next) {
		b.WriteString("; " + next)
	}
	if e.RetryAfter > 0 {
		b.WriteString("; retry after " + e.RetryAfter.String())
	}
	return b.String()
}

// Code returns the latch error code of err ("" when err is not an *Error).
func Code(err error) string {
	if e, ok := errors.AsType[*Error](err); ok {
		return e.Code
	}
	return ""
}

// responseError builds the *Error of a non-2xx response.
func responseError(resp *http.Response) error {
	e := &Error{Status: resp.StatusCode, RequestID: resp.Header.Get("X-Request-Id")}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var body api.ErrorResponse
	if err := json.Unmarshal(b, &body); err == nil && body.Error.Code != "" {
		e.Code, e.Message, e.Reasons = body.Error.Code, body.Error.Message, body.Error.Reasons
		e.NextAllowedAt = body.Error.NextAllowedAt
		e.RetryAfter = retryAfter(int64(body.Error.RetryAfter))
		if body.Error.RequestID != "" {
			e.RequestID = body.Error.RequestID
		}
	} else {
		e.Message = strings.TrimSpace(string(b))
		if len(e.Message) > 200 {
			e.Message = strings.ToValidUTF8(e.Message[:200], "") + "…"
		}
		if e.Message == "" {
			e.Message = http.StatusText(resp.StatusCode)
		}
	}
	if s, err := strconv.ParseInt(resp.Header.Get("Retry-After"), 10, 64); err == nil && s >= 0 {
		e.RetryAfter = retryAfter(s)
	}
	return e
}

// maxRetryAfter caps a server's Retry-After: a broken server's huge value
// must not overflow into a negative wait, nor park a caller for years.
const maxRetryAfter = 24 * time.Hour

func retryAfter(seconds int64) time.Duration {
	if seconds < 0 {
		return 0
	}
	return time.Duration(min(seconds, int64(maxRetryAfter/time.Second))) * time.Second
}
