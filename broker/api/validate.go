package api

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits of requests. The server refuses a request past any of them with
// 400 (413 for the body size).
const (
	// MaxBodyBytes is the largest request body the server reads.
	MaxBodyBytes = 64 << 10
	// MaxNameLen bounds a task name, a template version and a parameter
	// name.
	MaxNameLen = 128
	// MaxIDLen bounds request_id, trace_id and approval_id.
	MaxIDLen = 128
	// MaxParams bounds how many parameters a request carries.
	MaxParams = 64
	// MaxParamValueLen bounds one parameter value.
	MaxParamValueLen = 1024
	// MaxReasonLen bounds a reason.
	MaxReasonLen = 1024
	// MaxSPIFFEIDLen bounds an agent ID (the SPIFFE specification's
	// limit on a SPIFFE ID).
	MaxSPIFFEIDLen = 2048
	// DefaultListLimit and MaxListLimit bound list answers.
	DefaultListLimit = 100
	MaxListLimit     = 1000
)

// FieldError names a request field and what is wrong with it.
type FieldError struct {
	Field   string
	Problem string
}

func (e *FieldError) Error() string { return fmt.Sprintf("field %q: %s", e.Field, e.Problem) }

func fieldErr(field, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Problem: fmt.Sprintf(format, args...)}
}

// Validate checks the request's shape (not the policy: an unknown task is
// a denial, not a malformed request). Task is required, except to pick up
// an approval, which knows its task.
func (r *CredentialsRequest) Validate() error {
	if err := name("task", r.Task, r.ApprovalID == ""); err != nil {
		return err
	}
	if len(r.Params) > MaxParams {
		return fieldErr("params", "%d parameters, at most %d", len(r.Params), MaxParams)
	}
	for k, v := range r.Params {
		if err := name("params", k, true); err != nil {
			err.Problem = "parameter name: " + err.Problem
			return err
		}
		// Only the size and the encoding here: what a value may hold is
		// the template's to say (a control character is refused there,
		// as param_constraint, like any value outside the constraint).
		if len(v) > MaxParamValueLen {
			return fieldErr("params."+k, "is %d bytes long, at most %d", len(v), MaxParamValueLen)
		}
		if !utf8.ValidString(v) {
			return fieldErr("params."+k, "is not valid UTF-8")
		}
	}
	if err := multiline("reason", r.Reason, MaxReasonLen); err != nil {
		return err
	}
	if r.TTL < 0 {
		return fieldErr("ttl", "must not be negative")
	}
	for _, f := range []struct{ name, v string }{{"request_id", r.RequestID}, {"trace_id", r.TraceID}, {"approval_id", r.ApprovalID}} {
		if err := token(f.name, f.v); err != nil {
			return err
		}
	}
	return nil
}

// MaxClientNameLen bounds ToolCall.Client.
const MaxClientNameLen = 128

// Validate checks the report: a client name and a tool, a task name when
// set, a token of a trace ID.
func (r *ToolCall) Validate() error {
	if err := text("client", r.Client, MaxClientNameLen, false); err != nil {
		return err
	}
	if err := name("tool", r.Tool, true); err != nil {
		return err
	}
	if err := name("task", r.Task, false); err != nil {
		return err
	}
	return token("trace_id", r.TraceID)
}

// Validate checks the request.
func (r *RenewRequest) Validate() error {
	if r.TTL < 0 {
		return fieldErr("ttl", "must not be negative")
	}
	return nil
}

// Selectors is how many of lease, agent, task, template and all are set.
func (r *RevokeRequest) Selectors() int {
	n := 0
	for _, set := range []bool{r.Lease != "", r.Agent != "", r.Task != "", r.Template != "", r.All} {
		if set {
			n++
		}
	}
	return n
}

// Validate checks that exactly one selector is set and a reason is given.
func (r *RevokeRequest) Validate() error {
	if n := r.Selectors(); n != 1 {
		return fieldErr("lease", "say which leases to revoke: exactly one of lease, agent, task, template or all (got %d)", n)
	}
	switch {
	case r.Lease != "" && !ValidLeaseID(r.Lease):
		return fieldErr("lease", "%q is not a lease ID (26 characters of Crockford base32)", truncate(r.Lease))
	case r.Agent != "":
		if err := SPIFFEID("agent", r.Agent); err != nil {
			return err
		}
	case r.Task != "":
		if err := name("task", r.Task, true); err != nil {
			return err
		}
	case r.Template != "":
		if strings.HasPrefix(r.Template, "sha256:") {
			return fieldErr("template", "takes the template's name (the task); a version hash narrows it in version")
		}
		if err := name("template", r.Template, true); err != nil {
			return err
		}
	}
	if r.Version != "" {
		if r.Template == "" {
			return fieldErr("version", "narrows a template: name the template too")
		}
		if err := templateVersion(r.Version); err != nil {
			return err
		}
	}
	return reason(r.Reason)
}

// templateVersion checks a template version hash or a prefix of it as
// latch lease list prints it: sha256: and 8 to 64 hex digits, so a
// prefix is long enough not to match two versions of one template.
func templateVersion(v string) error {
	digits, ok := strings.CutPrefix(v, "sha256:")
	if !ok || len(digits) < 8 || len(digits) > 64 || strings.Trim(digits, "0123456789abcdef") != "" {
		return fieldErr("version", "%q is not a template version: sha256: and 8 to 64 hex digits, as latch lease list prints it", truncate(v))
	}
	return nil
}

// Validate checks that a reason is given.
func (r *AgentActionRequest) Validate() error { return reason(r.Reason) }

// Validate checks that on and a reason are given.
func (r *FreezeRequest) Validate() error {
	if r.On == nil {
		return fieldErr("on", "is required: true starts the freeze, false ends it")
	}
	return reason(r.Reason)
}

func reason(s string) error {
	if strings.TrimSpace(s) == "" {
		return fieldErr("reason", "is required: say why, it goes into the audit log")
	}
	return asErr(text("reason", s, MaxReasonLen, false))
}

// ValidLeaseID reports whether id looks like a lease ID: a ULID, 26
// characters of Crockford's base32 alphabet.
func ValidLeaseID(id string) bool {
	if len(id) != 26 {
		return false
	}
	for _, c := range []byte(id) {
		switch {
		case c >= '0' && c <= '9':
		case c >= 'A' && c <= 'Z' && c != 'I' && c != 'L' && c != 'O' && c != 'U':
		default:
			return false
		}
	}
	return id[0] <= '7' // a ULID's 48-bit time fits in 10 characters only so
}

// SPIFFEID checks the shape of a SPIFFE ID field: spiffe://, no control
// characters, at most MaxSPIFFEIDLen bytes. The server parses it fully.
func SPIFFEID(field, id string) error {
	if !strings.HasPrefix(id, "spiffe://") {
		return fieldErr(field, "%q is not a SPIFFE ID (spiffe://trust-domain/path)", truncate(id))
	}
	return asErr(text(field, id, MaxSPIFFEIDLen, true))
}

// asErr returns nil for a nil *FieldError: returning one as an error
// directly would make a non-nil interface.
func asErr(e *FieldError) error {
	if e == nil {
		return nil
	}
	return e
}

// name checks a short identifier: not empty (when required), at most
// MaxNameLen bytes, printable, no spaces.
func name(field, s string, required bool) *FieldError {
	if s == "" {
		if required {
			return fieldErr(field, "is required")
		}
		return nil
	}
	return text(field, s, MaxNameLen, true)
}

// token checks an optional ID chosen by the caller: at most MaxIDLen
// bytes of letters, digits and ._:- (what request IDs and trace IDs are
// made of), so it is safe in logs and index keys.
func token(field, s string) error {
	if len(s) > MaxIDLen {
		return fieldErr(field, "is %d bytes long, at most %d", len(s), MaxIDLen)
	}
	for _, c := range s {
		if !(c < utf8.RuneSelf && (c == '.' || c == '_' || c == ':' || c == '-' || unicode.IsLetter(c) || unicode.IsDigit(c))) {
			return fieldErr(field, "may hold only letters, digits and . _ : - (found %q)", c)
		}
	}
	return nil
}

// multiline checks free text of several lines, such as an LLM agent's
// reason: as text, with newlines allowed too (every place a reason is
// shown escapes or breaks them for where it goes).
func multiline(field, s string, max int) *FieldError {
	for line := range strings.SplitSeq(s, "\n") {
		if err := text(field, strings.TrimSuffix(line, "\r"), max, false); err != nil {
			return err
		}
	}
	if len(s) > max {
		return fieldErr(field, "is %d bytes long, at most %d", len(s), max)
	}
	return nil
}

// text checks free text: valid UTF-8, at most max bytes, no control
// characters (and no spaces when noSpace).
func text(field, s string, max int, noSpace bool) *FieldError {
	if len(s) > max {
		return fieldErr(field, "is %d bytes long, at most %d", len(s), max)
	}
	if !utf8.ValidString(s) {
		return fieldErr(field, "is not valid UTF-8")
	}
	for _, c := range s {
		if unicode.IsControl(c) && !(c == '\t' && !noSpace) {
			return fieldErr(field, "contains the control character %q", c)
		}
		if noSpace && unicode.IsSpace(c) {
			return fieldErr(field, "must not contain spaces")
		}
	}
	return nil
}

func truncate(s string) string {
	if len(s) <= 64 {
		return s
	}
	i := 64
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "…"
}
