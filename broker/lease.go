package broker

import (
	"time"

	"github.com/latchbroker/latch/templates"
)

// LeaseState is where a lease is in its life:
//
//	pending → active → revoking → revoked | expired
//	pending → failed                 (the backend refused; nothing minted)
//	revoking → irrevocable           (retries exhausted; listed, never dropped)
type LeaseState string

const (
	StatePending     LeaseState = "pending"
	StateActive      LeaseState = "active"
	StateRevoking    LeaseState = "revoking"
	StateRevoked     LeaseState = "revoked"
	StateExpired     LeaseState = "expired"
	StateFailed      LeaseState = "failed"
	StateIrrevocable LeaseState = "irrevocable"
)

// Live reports whether a lease in this state may still have a credential
// in the backend.
func (s LeaseState) Live() bool {
	switch s {
	case StatePending, StateActive, StateRevoking, StateIrrevocable:
		return true
	}
	return false
}

// Valid reports whether s is one of the states above.
// Ended reports whether a lease in state s is over for good: revoked,
// expired or failed.
func (s LeaseState) Ended() bool {
	return s == StateRevoked || s == StateExpired || s == StateFailed
}

func (s LeaseState) Valid() bool {
	return s.Live() || s == StateRevoked || s == StateExpired || s == StateFailed
}

// Asked is what an agent's request asked for, as decided: an approval
// and the lease it produces record the same.
type Asked struct {
	Agent           string            `json:"agent"`
	Task            string            `json:"task"`
	TemplateVersion string            `json:"template_version"`
	Backend         string            `json:"backend"`
	Params          map[string]string `json:"params,omitempty"` // effective: defaults applied
	Reason          string            `json:"reason,omitempty"`
	TraceID         string            `json:"trace_id,omitempty"`
	RequestID       string            `json:"request_id,omitempty"`
}

// Lease is one issued credential: who got it, for what, and the references
// needed to revoke it. It never holds the secret.
type Lease struct {
	ID string `json:"id"` // ULID: sorts by issue time
	Asked
	Tier       string `json:"tier,omitempty"`
	ApprovalID string `json:"approval_id,omitempty"`
	// Replica is the latch process that minted it (Config.Replica): its
	// intent is that replica's to finish while the replica lives.
	Replica string `json:"replica,omitempty"`

	Refs Refs `json:"refs"`

	IssuedAt     time.Time  `json:"issued_at"`
	ExpiresAt    time.Time  `json:"expires_at"`
	MaxExpiresAt time.Time  `json:"max_expires_at"`
	State        LeaseState `json:"state"`

	// Set when the lease leaves the active state.
	EndedAt      time.Time `json:"ended_at,omitzero"`
	RevokeReason string    `json:"revoke_reason,omitempty"`
	LastError    string    `json:"last_error,omitempty"`
	// Withheld marks a lease whose secret never reached the agent: the
	// mint failed, or a condition (a pause, a freeze) failed at commit. A
	// retry of its request is decided afresh instead of replayed.
	Withheld bool `json:"withheld,omitempty"`
}

// LeaseFilter selects leases; zero fields match everything.
type LeaseFilter struct {
	Agent    string
	Task     string // template name
	State    LeaseState
	LiveOnly bool // pending, active, revoking or irrevocable
	Limit    int  // 0: no limit
}

// Match reports whether l passes the filter (Limit aside).
func (f LeaseFilter) Match(l *Lease) bool {
	return (f.Agent == "" || l.Agent == f.Agent) &&
		(f.Task == "" || l.Task == f.Task) &&
		(f.State == "" || l.State == f.State) &&
		(!f.LiveOnly || l.State.Live())
}

// Revocation is a queued revocation of one lease: durable, retried with
// backoff until the backend confirms.
type Revocation struct {
	LeaseID     string    `json:"lease_id"`
	Reason      string    `json:"reason"`
	Actor       string    `json:"actor"`
	Attempts    int       `json:"attempts"`
	NextAttempt time.Time `json:"next_attempt"`
	LastError   string    `json:"last_error,omitempty"`
	// Expiry marks a revocation caused by the lease's TTL running out, so
	// the lease ends as expired rather than revoked.
	Expiry bool `json:"expiry,omitempty"`
	// Group, Agent and Backend are set on the revocation of a whole group
	// (see groups.go), queued once for the group's leases by a revocation
	// by agent, task, template or all: LeaseID is then "group/<Group>".
	Group   string `json:"group,omitempty"`
	Agent   string `json:"agent,omitempty"`
	Backend string `json:"backend,omitempty"`
}

// AgentState is an operator's hold on an agent: the same states the policy
// decides on.
type AgentState = templates.AgentState

const (
	AgentActive      = templates.AgentActive
	AgentPaused      = templates.AgentPaused
	AgentQuarantined = templates.AgentQuarantined
)

// AgentRecord is what latch remembers of one agent: its state, who set it
// and why, and when it last got a credential, of each template.
type AgentRecord struct {
	ID        string     `json:"id"`
	State     AgentState `json:"state"`
	Reason    string     `json:"reason,omitempty"`
	Actor     string     `json:"actor,omitempty"`
	ChangedAt time.Time  `json:"changed_at,omitzero"`
	LastUsed  time.Time  `json:"last_used,omitzero"`
	// Used is the last issue of each template (by name) to the agent.
	Used map[string]time.Time `json:"used,omitempty"`
}

// SetState takes a's state change (State, Reason, Actor, ChangedAt) and
// keeps r's usage: what a store does with Change.AgentStates.
func (r *AgentRecord) SetState(a AgentRecord) {
	r.State, r.Reason, r.Actor, r.ChangedAt = a.State, a.Reason, a.Actor, a.ChangedAt
}

// RecordUse takes u (an issue of u.Template at u.At) and keeps r's state,
// so that a use committed after a pause keeps the pause; times never move
// back: what a store does with Change.Uses.
func (r *AgentRecord) RecordUse(u Use) {
	if u.At.After(r.LastUsed) {
		r.LastUsed = u.At
	}
	if r.Used == nil {
		r.Used = map[string]time.Time{}
	}
	if u.At.After(r.Used[u.Template]) {
		r.Used[u.Template] = u.At
	}
}

// Grant is one template an agent entry of the policy may use, and since
// when: the first policy load that granted it.
type Grant struct {
	Agent    string    `json:"agent"` // the entry's ID or prefix pattern
	Template string    `json:"template"`
	Since    time.Time `json:"since"`
}

// FreezeState is the global emergency freeze.
type FreezeState struct {
	Active bool      `json:"active"`
	Reason string    `json:"reason,omitempty"`
	Actor  string    `json:"actor,omitempty"`
	Since  time.Time `json:"since,omitzero"`
}
