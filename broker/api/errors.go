package api

import (
	"strings"
	"time"
)

// Error codes: the one list, shared by the server, the client and the
// broker (whose EINVALID, EFORBIDDEN ... are these constants). The broker
// returns invalid, forbidden, not_found, conflict, limit, unavailable and
// internal; the HTTP layer adds unauthorized (a credential that did not
// verify), method_not_allowed and too_large. Each maps to exactly one HTTP
// status (see Status).
const (
	CodeInvalid          = "invalid"            // 400: malformed request, unknown field, bad value
	CodeUnauthorized     = "unauthorized"       // 401: no credential, or one that did not verify
	CodeForbidden        = "forbidden"          // 403: denied by policy, or a missing role
	CodeNotFound         = "not_found"          // 404: no such lease, agent or route
	CodeMethodNotAllowed = "method_not_allowed" // 405: the route exists, the method does not
	CodeConflict         = "conflict"           // 409: the state does not allow it
	CodeTooLarge         = "too_large"          // 413: request body over MaxBodyBytes
	CodeLimit            = "limit"              // 429: rate limit or lease budget; see Retry-After
	CodeInternal         = "internal"           // 500: a bug; details are in the server's log
	CodeUnavailable      = "unavailable"        // 503: Vault, the store or the audit log cannot be reached; retry
)

// statuses is the one table from error code to HTTP status.
var statuses = map[string]int{
	CodeInvalid:          400,
	CodeUnauthorized:     401,
	CodeForbidden:        403,
	CodeNotFound:         404,
	CodeMethodNotAllowed: 405,
	CodeConflict:         409,
	CodeTooLarge:         413,
	CodeLimit:            429,
	CodeInternal:         500,
	CodeUnavailable:      503,
}

// Status returns the HTTP status of an error code; 500 for a code it does
// not know.
func Status(code string) int {
	if s, ok := statuses[code]; ok {
		return s
	}
	return 500
}

// Codes returns every error code, for tests that walk the table.
func Codes() []string {
	out := make([]string, 0, len(statuses))
	for c := range statuses {
		out = append(out, c)
	}
	return out
}

// ErrorResponse is the body of every error.
type ErrorResponse struct {
	Error ErrorBody `json:"error"`
}

// ErrorBody describes what went wrong. Message is written for the caller
// and safe to show. Reasons are stable codes (for denials, the policy's
// reason codes, with ":window" for freeze windows; for 401, the credential
// refusal kind). NextAllowedAt is when a denied request may succeed;
// RetryAfter, in whole seconds, when a limited one may (also sent as the
// Retry-After header).
type ErrorBody struct {
	Code          string    `json:"code"`
	Message       string    `json:"message"`
	Reasons       []string  `json:"reasons"`
	NextAllowedAt time.Time `json:"next_allowed_at,omitzero"`
	RetryAfter    int       `json:"retry_after,omitempty"`
	// RequestID names the request in the server's log (500s).
	RequestID string `json:"request_id,omitempty"`
}

// String is "code: message (reasons)".
func (e ErrorBody) String() string {
	s := e.Code + ": " + e.Message
	if len(e.Reasons) > 0 {
		s += " (" + strings.Join(e.Reasons, ", ") + ")"
	}
	return s
}
