package broker

import (
	"errors"
	"fmt"
	"time"

	"github.com/latchbroker/latch/broker/api"
)

// Error codes: the wire's codes (broker/api), under the names the domain
// uses. broker/api holds the one list and the one table from code to HTTP
// status; the client reads them there without linking the broker. These are
// the codes the broker itself returns; the HTTP layer adds unauthorized,
// method_not_allowed and too_large. The message of an *Error is safe to
// show to the caller.
const (
	EINVALID     = api.CodeInvalid     // bad input: malformed, unknown field, bad parameter
	EFORBIDDEN   = api.CodeForbidden   // identity known, request denied by policy
	ENOTFOUND    = api.CodeNotFound    // no such lease, agent or approval
	ECONFLICT    = api.CodeConflict    // the state does not allow it (e.g. renew a revoked lease)
	ELIMIT       = api.CodeLimit       // rate limit or lease budget exceeded
	EUNAVAILABLE = api.CodeUnavailable // Vault or the audit log cannot be reached; retry later
	EINTERNAL    = api.CodeInternal    // a bug; details are logged, never sent
)

// Error is latch's error as the caller sees it: a code, a message safe to
// show, and for denials the reasons and when the request may succeed.
type Error struct {
	Code          string
	Message       string
	Reasons       []string
	NextAllowedAt time.Time
	// RetryAfter, for ELIMIT, is how long to wait before trying again.
	RetryAfter time.Duration
	// Err is the internal cause: logged, never sent.
	Err error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Err)
	}
	return e.Code + ": " + e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an *Error with a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of the first *Error in err's chain, EINTERNAL
// for any other non-nil error, and "" for nil.
func ErrorCode(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return EINTERNAL
}

// unavailable is the error of a store or audit log (what) that cannot
// serve: latch fails closed on it.
func unavailable(what string, err error) *Error {
	return &Error{Code: EUNAVAILABLE, Message: what + " is unavailable", Err: err}
}
