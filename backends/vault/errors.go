package vault

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/latchbroker/latch/broker"
)

// Error is a failed Vault call. Its message names the operation, the path
// and Vault's error text — never a token or a secret value (Vault does not
// echo request bodies in errors, and this package never puts tokens into
// paths).
type Error struct {
	// Op is the operation, such as "token.create" or "lease.revoke".
	Op string
	// Path is the Vault API path, without /v1/.
	Path string
	// Status is the HTTP status Vault answered with; 0 when no answer
	// arrived (connection refused, reset, timed out).
	Status int
	// Messages are Vault's error strings.
	Messages []string
	// Retryable is true when a later attempt may succeed; such an Error
	// matches broker.ErrBackendUnavailable.
	Retryable bool
	// Err is the underlying transport or context error, if any.
	Err error
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "vault: %s %s: ", e.Op, e.Path)
	switch {
	case e.Status != 0 && len(e.Messages) > 0:
		fmt.Fprintf(&b, "%d %s: %s", e.Status, http.StatusText(e.Status), strings.Join(e.Messages, "; "))
	case e.Status != 0:
		fmt.Fprintf(&b, "%d %s", e.Status, http.StatusText(e.Status))
	case e.Err != nil:
		b.WriteString(e.Err.Error())
	default:
		b.WriteString("failed")
	}
	if e.Retryable {
		b.WriteString(" (unavailable, retryable)")
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Is makes retryable errors match broker.ErrBackendUnavailable.
func (e *Error) Is(target error) bool {
	return target == broker.ErrBackendUnavailable && e.Retryable
}

// HasMessage reports whether one of Vault's messages contains s.
func (e *Error) HasMessage(s string) bool {
	for _, m := range e.Messages {
		if strings.Contains(m, s) {
			return true
		}
	}
	return false
}

// StatusOf returns the HTTP status of a Vault error, or 0.
func StatusOf(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}

// retryableStatus lists the statuses worth another attempt: Vault sealed,
// standby or overloaded (5xx except 501 Not Implemented), rate limited
// (429), or a performance standby not yet caught up (412).
func retryableStatus(code int) bool {
	switch {
	case code == http.StatusTooManyRequests, code == http.StatusPreconditionFailed:
		return true
	case code >= 500 && code != http.StatusNotImplemented:
		return true
	}
	return false
}

// classify turns what the API client returned into an *Error.
func classify(op, path string, err error) *Error {
	e := &Error{Op: op, Path: path, Err: err}
	var re *vaultapi.ResponseError
	switch {
	case errors.As(err, &re):
		e.Status = re.StatusCode
		e.Messages = re.Errors
		if len(e.Messages) == 0 && re.RawError {
			e.Messages = []string{"(non-JSON error body)"}
		}
		e.Err = nil // its text repeats the URL and messages above
		e.Retryable = retryableStatus(re.StatusCode)
	default:
		// No answer: refused, reset, TLS failure, a deadline, or the
		// caller gave up. A later call may well succeed.
		e.Retryable = true
	}
	return e
}
