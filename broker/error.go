package broker

import (
	"errors"
	"fmt"
	"time"
)

// Error codes. Each maps to one HTTP status in the server's table; the
// message of an *Error is safe to show to the caller.
const (
	EINVALID      = "invalid"      // bad input: malformed, unknown field, bad parameter
	EUNAUTHORIZED = "unauthorized" // no or bad identity
	EFORBIDDEN    = "forbidden"    // identity known, request denied by policy
	ENOTFOUND     = "not_found"    // no such lease, agent or approval
	ECONFLICT     = "conflict"     // the state does not allow it (e.g. renew a revoked lease)
	ELIMIT        = "limit"        // rate limit or lease budget exceeded
	EUNAVAILABLE  = "unavailable"  // Vault or the audit log cannot be reached; retry later
	EINTERNAL     = "internal"     // a bug; details are logged, never sent
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

// ErrorMessage returns the safe message of err: the *Error's message, or a
// generic text for internal errors, whose details must not leak.
func ErrorMessage(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return "internal error"
}

// unavailable is the error of a store or audit log (what) that cannot
// serve: latch fails closed on it.
func unavailable(what string, err error) *Error {
	return &Error{Code: EUNAVAILABLE, Message: what + " is unavailable", Err: err}
}
