package templates

import (
	"strings"
	"time"
)

// ReasonCode says why a request was denied or needs approval. The broker
// maps codes to its own error codes and HTTP statuses; they are stable
// strings because they also appear in audit events and API responses.
type ReasonCode string

// Deny reasons.
const (
	ReasonUnknownAgent     ReasonCode = "unknown_agent"     // SPIFFE ID matches no agents: entry
	ReasonTaskNotGranted   ReasonCode = "task_not_granted"  // the agent may not use this template
	ReasonUnknownTask      ReasonCode = "unknown_task"      // no template of that name
	ReasonUnknownParam     ReasonCode = "unknown_param"     // a parameter the template does not declare
	ReasonParamConstraint  ReasonCode = "param_constraint"  // a value outside the enum or pattern
	ReasonMissingParam     ReasonCode = "missing_param"     // a parameter without default is absent
	ReasonFrozen           ReasonCode = "frozen"            // a deny window blocks; see Window, NextAllowedAt
	ReasonGlobalFreeze     ReasonCode = "global_freeze"     // latch freeze start is in effect
	ReasonAgentPaused      ReasonCode = "agent_paused"      // an operator paused the agent
	ReasonAgentQuarantined ReasonCode = "agent_quarantined" // an operator quarantined the agent
	ReasonRenderFailed     ReasonCode = "render_failed"     // a template did not render; a config bug, fail closed
)

// Approval reasons (Outcome ApprovalRequired).
const (
	ReasonTierApproval   ReasonCode = "tier_approval"   // the risk tier needs approvals
	ReasonWindowApproval ReasonCode = "window_approval" // a require_approval window applies
)

// Reason is one reason for a decision's outcome.
type Reason struct {
	Code    ReasonCode `json:"code"`
	Message string     `json:"message"`
	// Window names the freeze window for frozen and window_approval.
	Window string `json:"window,omitempty"`
	// NextAllowedAt is when this reason stops applying, when known.
	NextAllowedAt time.Time `json:"next_allowed_at,omitzero"`
}

// Denied is the error form of a deny Decision (see Decision.Err). The broker
// recovers it with errors.As to build its response and audit event:
//
//	var denied *templates.Denied
//	if errors.As(err, &denied) { ... denied.Reasons ... }
type Denied struct {
	Agent   string
	Task    string
	Reasons []Reason
	// NextAllowedAt is when freeze windows stop blocking; zero if no window
	// blocks or none ends.
	NextAllowedAt time.Time
}

func (e *Denied) Error() string {
	msgs := make([]string, len(e.Reasons))
	for i, r := range e.Reasons {
		msgs[i] = string(r.Code) + ": " + r.Message
	}
	return "templates: denied: " + strings.Join(msgs, "; ")
}

// Code is the first reason's code, the one to report when only one fits.
func (e *Denied) Code() ReasonCode {
	if len(e.Reasons) == 0 {
		return ""
	}
	return e.Reasons[0].Code
}

// Has reports whether any reason has code c.
func (e *Denied) Has(c ReasonCode) bool {
	for _, r := range e.Reasons {
		if r.Code == c {
			return true
		}
	}
	return false
}
