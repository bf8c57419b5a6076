package httpapi

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/latchbroker/latch/attest"
	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/api"
)

// errorBody turns any error a route returns into what the caller sees and
// the status it is sent with. Only *broker.Error, *badRequest and
// *attest.Error carry messages meant for callers; anything else is an
// internal error whose text stays in the log.
func errorBody(err error, requestID string) (api.ErrorBody, int) {
	body := api.ErrorBody{Reasons: []string{}}
	var (
		bad *badRequest
		be  *broker.Error
		ae  *attest.Error
	)
	switch {
	case errors.As(err, &bad):
		body.Code, body.Message, body.Reasons = bad.code, bad.message, []string{bad.reason}
	case errors.As(err, &ae):
		body.Code, body.Message, body.Reasons = api.CodeUnauthorized, ae.Message, []string{string(ae.Kind)}
		if ae.Kind == attest.KindUnavailable {
			body.Code = api.CodeUnavailable
		}
	case errors.As(err, &be):
		body.Code, body.Message = be.Code, be.Message
		if be.Reasons != nil {
			body.Reasons = be.Reasons
		}
		body.NextAllowedAt = be.NextAllowedAt.UTC()
		if be.Code == api.CodeLimit {
			body.RetryAfter = retryAfterSeconds(be)
		}
	default:
		body.Code = api.CodeInternal
	}
	if body.Code == api.CodeInternal || api.Status(body.Code) == http.StatusInternalServerError {
		body.Code = api.CodeInternal
		body.Message = fmt.Sprintf("internal error (request %s): the details are in latch's log", requestID)
		body.Reasons = []string{}
		body.NextAllowedAt = time.Time{}
		body.RequestID = requestID
	}
	return body, api.Status(body.Code)
}

// retryAfterSeconds rounds a limit's wait up to whole seconds, at least 1:
// Retry-After has no finer unit, and 0 would invite an immediate retry.
func retryAfterSeconds(e *broker.Error) int {
	s := math.Ceil(e.RetryAfter.Seconds())
	if s < 1 {
		return 1
	}
	if s > math.MaxInt32 {
		return math.MaxInt32
	}
	return int(s)
}

// writeError sends err as an error envelope, with the headers its status
// calls for.
func (c *call) writeError(err error) {
	body, status := errorBody(err, c.requestID)
	switch status {
	case http.StatusTooManyRequests:
		c.w.Header().Set("Retry-After", strconv.Itoa(body.RetryAfter))
	case http.StatusUnauthorized:
		c.w.Header().Set("WWW-Authenticate", `Bearer realm="latch"`)
	}
	c.errCode = body.Code
	// Counted before the answer leaves, so that a caller that has it
	// sees the count.
	if reason, ok := refused(status, body.Reasons); ok {
		c.h.metrics.Refused(reason)
		if reason != reasonTooManyRefusals && !c.who.adminSocket {
			c.h.budget.spend(callerKey(c), c.h.now())
		}
	}
	_ = c.writeJSON(status, api.ErrorResponse{Error: body})
}
