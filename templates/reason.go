package templates

import "time"

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
	ReasonBackendRefused   ReasonCode = "backend_refused"   // the backend's own checks refuse what the request rendered (see Backend.Check)
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
