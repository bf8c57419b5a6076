package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// CredentialsRequest is the body of POST /v1/credentials: an agent asks
// for credentials for one task.
type CredentialsRequest struct {
	// Task is the template name.
	Task string `json:"task"`
	// Params are the template's parameters.
	Params Params `json:"params,omitempty"`
	// Reason says why the agent needs the credential: audited, and shown
	// to approvers.
	Reason string `json:"reason,omitempty"`
	// TTL asks for a lease TTL ("10m"); zero takes the template's. It is
	// clamped to the template's and the risk tier's maximum.
	TTL Duration `json:"ttl,omitzero"`
	// RequestID makes retries idempotent: a retry with the same ID gets
	// the same lease (without its secret, which latch does not keep).
	RequestID string `json:"request_id,omitempty"`
	// TraceID ties the request to the agent's own trace.
	TraceID string `json:"trace_id,omitempty"`
	// ApprovalID picks up an approved request.
	ApprovalID string `json:"approval_id,omitempty"`
}

// ExplainRequest is the body of POST /v1/explain: the request that would
// be sent to /v1/credentials, evaluated without issuing anything.
type ExplainRequest = CredentialsRequest

// CredentialsResponse is the answer to a credentials request: 200 with
// the lease and its secret, or 202 with the approval the request now
// waits for (Lease is then zero, and nothing was minted).
type CredentialsResponse struct {
	Lease Lease `json:"lease,omitzero"`
	// Secret is the credential: "token"; or "username" and "password";
	// or "certificate", "private_key" and "ca_chain". It is empty when
	// Replayed.
	Secret Secret `json:"secret,omitempty"`
	// Approval, on a 202, is the pending approval. Once it is approved,
	// ask again with ApprovalID set to its ID to get the lease (asking
	// before answers 409 while it is pending).
	Approval *Approval `json:"approval,omitempty"`
	// Replayed is set when the request_id named an earlier request: Lease
	// (or Approval) is that request's, and the secret is not sent again.
	Replayed bool `json:"replayed,omitempty"`
}

// Approval statuses.
const (
	ApprovalPending  = "pending"
	ApprovalApproved = "approved"
	ApprovalDenied   = "denied"
	ApprovalExpired  = "expired"
	ApprovalConsumed = "consumed"
)

// Approval is a request that waits for people to agree before anything
// is minted, with what they are asked to approve.
type Approval struct {
	ID              string            `json:"id"`
	Agent           string            `json:"agent"`
	Owner           string            `json:"owner,omitempty"`
	Task            string            `json:"task"`
	TemplateVersion string            `json:"template_version"`
	Backend         string            `json:"backend"`
	Params          map[string]string `json:"params,omitempty"`
	Reason          string            `json:"reason,omitempty"`
	TraceID         string            `json:"trace_id,omitempty"`
	RequestID       string            `json:"request_id,omitempty"`
	Rendered        ApprovalRendered  `json:"rendered"`
	TTL             Duration          `json:"ttl"`
	MaxTTL          Duration          `json:"max_ttl"`
	Tier            string            `json:"tier"`
	TierWhy         []string          `json:"tier_why,omitempty"`
	Reasons         []ApprovalReason  `json:"reasons,omitempty"`
	// Required is how many distinct approvers must approve.
	Required int      `json:"required"`
	Reviews  []Review `json:"reviews,omitempty"`
	Status   string   `json:"status"`
	// ExpiresAt is the deadline for the reviews while pending; PickupBy
	// the deadline for the pickup once approved.
	CreatedAt  time.Time `json:"created_at"`
	ExpiresAt  time.Time `json:"expires_at"`
	DecidedAt  time.Time `json:"decided_at,omitzero"`
	PickupBy   time.Time `json:"pickup_by,omitzero"`
	ConsumedAt time.Time `json:"consumed_at,omitzero"`
	LeaseID    string    `json:"lease_id,omitempty"`
}

// ApprovalRendered is what would be minted once approved.
type ApprovalRendered struct {
	Policy     string            `json:"policy,omitempty"`
	Path       string            `json:"path,omitempty"`
	Vars       map[string]string `json:"vars,omitempty"`
	CommonName string            `json:"common_name,omitempty"`
	AltNames   []string          `json:"alt_names,omitempty"`
	URISANs    []string          `json:"uri_sans,omitempty"`
	IPSANs     []string          `json:"ip_sans,omitempty"`
}

// ApprovalReason is one rule that asked for approval (tier_approval,
// window_approval).
type ApprovalReason struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Window  string `json:"window,omitempty"`
}

// Review is one approver's decision.
type Review struct {
	Approver string    `json:"approver"`        // SPIFFE ID, or a person's issuer#subject
	Email    string    `json:"email,omitempty"` // a person's verified email
	Decision string    `json:"decision"`        // approve, deny
	Reason   string    `json:"reason"`
	At       time.Time `json:"at"`
}

// Secret is a credential's fields: read them by name (s["password"]).
// It travels from the server as a JSON object of strings, but once
// decoded it prints as [redacted] through fmt, log/slog and
// encoding/json, so that an agent logging or re-encoding a response by
// accident does not write its secret anywhere. To hand the fields on on
// purpose, convert: map[string]string(s).
type Secret map[string]string

const redacted = "[redacted]"

// String implements fmt.Stringer.
func (Secret) String() string { return redacted }

// GoString implements fmt.GoStringer.
func (Secret) GoString() string { return redacted }

// Format implements fmt.Formatter: every verb prints [redacted].
func (Secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(redacted)) }

// LogValue implements slog.LogValuer.
func (Secret) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalJSON implements json.Marshaler: "[redacted]". (Decoding reads
// the object the server sends.)
func (Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// ExplainResponse is the answer to POST /v1/explain.
type ExplainResponse struct {
	Decision Decision `json:"decision"`
}

// RenewRequest is the body of POST /v1/leases/{id}/renew. The body may be
// empty: the lease is then extended by its original TTL.
type RenewRequest struct {
	// TTL is how long from now the lease should last, up to its max TTL.
	TTL Duration `json:"ttl,omitzero"`
}

// LeaseResponse carries one lease (renew, show).
type LeaseResponse struct {
	Lease Lease `json:"lease"`
}

// ReleaseResponse is the answer to DELETE /v1/leases/{id}: the lease is
// being revoked.
type ReleaseResponse struct {
	LeaseID string `json:"lease_id"`
	State   string `json:"state"`
}

// Lease states.
const (
	StatePending     = "pending"
	StateActive      = "active"
	StateRevoking    = "revoking"
	StateRevoked     = "revoked"
	StateExpired     = "expired"
	StateFailed      = "failed"
	StateIrrevocable = "irrevocable"
)

// LeaseStates lists every lease state.
var LeaseStates = []string{StatePending, StateActive, StateRevoking, StateRevoked, StateExpired, StateFailed, StateIrrevocable}

// Lease is one issued credential's record. It never holds the secret.
type Lease struct {
	ID              string            `json:"id"`
	Agent           string            `json:"agent"`
	Task            string            `json:"task"`
	TemplateVersion string            `json:"template_version"`
	Backend         string            `json:"backend"`
	Params          map[string]string `json:"params,omitempty"`
	Reason          string            `json:"reason,omitempty"`
	TraceID         string            `json:"trace_id,omitempty"`
	RequestID       string            `json:"request_id,omitempty"`
	Tier            string            `json:"tier,omitempty"`
	ApprovalID      string            `json:"approval_id,omitempty"`
	Replica         string            `json:"replica,omitempty"` // the latch replica that minted it (store.etcd)
	Refs            Refs              `json:"refs"`
	IssuedAt        time.Time         `json:"issued_at"`
	ExpiresAt       time.Time         `json:"expires_at"`
	MaxExpiresAt    time.Time         `json:"max_expires_at"`
	State           string            `json:"state"`
	EndedAt         time.Time         `json:"ended_at,omitzero"`
	RevokeReason    string            `json:"revoke_reason,omitempty"`
	LastError       string            `json:"last_error,omitempty"`
	Withheld        bool              `json:"withheld,omitempty"` // the secret never reached the agent
}

// Refs are the backend references of a lease: what latch revokes. Never
// the credential itself.
type Refs struct {
	TokenAccessor string `json:"token_accessor,omitempty"`
	Policy        string `json:"policy,omitempty"`
	VaultLeaseID  string `json:"vault_lease_id,omitempty"`
	Serial        string `json:"serial,omitempty"`
	MintAccessor  string `json:"mint_accessor,omitempty"`
	Group         string `json:"group,omitempty"`
}

// LeaseQuery filters GET /v1/leases; zero fields match everything.
type LeaseQuery struct {
	Agent string
	Task  string
	State string
	// Limit bounds the answer (0: DefaultListLimit; at most MaxListLimit).
	Limit int
}

// Values encodes q as query parameters.
func (q LeaseQuery) Values() url.Values {
	v := url.Values{}
	setNonEmpty(v, "agent", q.Agent)
	setNonEmpty(v, "task", q.Task)
	setNonEmpty(v, "state", q.State)
	if q.Limit != 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	return v
}

// LeasesResponse lists leases, newest first. More says that more leases
// matched than Limit allowed.
type LeasesResponse struct {
	Leases []Lease `json:"leases"`
	More   bool    `json:"more,omitempty"`
}

// RevokeRequest is the body of POST /v1/revoke: exactly one selector, and
// a reason.
type RevokeRequest struct {
	Lease string `json:"lease,omitempty"`
	Agent string `json:"agent,omitempty"`
	Task  string `json:"task,omitempty"`
	// Template is a template's name: every lease issued under any of its
	// versions, or under Version only.
	Template string `json:"template,omitempty"`
	All      bool   `json:"all,omitempty"`
	// Version narrows Template to one version: its hash (sha256:...) or
	// a prefix of at least 8 hex digits.
	Version string `json:"version,omitempty"`
	Reason  string `json:"reason"`
	// DryRun lists the active leases the selector matches and revokes
	// nothing, so a caller can show what a bulk revoke will hit.
	DryRun bool `json:"dry_run,omitempty"`
}

// RevokeResponse says how many leases were queued for revocation (or, for
// a dry run, would be, with the leases).
type RevokeResponse struct {
	Count  int     `json:"count"`
	DryRun bool    `json:"dry_run,omitempty"`
	Leases []Lease `json:"leases,omitempty"`
}

// AgentsResponse is the agent inventory: the agents: entries of the
// configuration, and every agent latch holds a record of.
type AgentsResponse struct {
	Entries []AgentEntry `json:"entries"`
	Agents  []Agent      `json:"agents"`
}

// AgentEntry is one agents: entry of the configuration.
type AgentEntry struct {
	// Pattern is an exact SPIFFE ID or a prefix ending in "*".
	Pattern   string   `json:"pattern"`
	Owner     string   `json:"owner"`
	Templates []string `json:"templates"`
	// Rate is "N/s", "N/m" or "N/h"; empty when unlimited.
	Rate      string `json:"rate,omitempty"`
	MaxActive int    `json:"max_active,omitempty"`
}

// Agent states.
const (
	AgentActive      = "active"
	AgentPaused      = "paused"
	AgentQuarantined = "quarantined"
)

// Agent is what latch holds of one agent: its state, who set it and why,
// when it last got a credential, and the agents: entry that governs it
// (Pattern is empty when none does any more).
type Agent struct {
	ID        string    `json:"id"`
	State     string    `json:"state"`
	Reason    string    `json:"reason,omitempty"`
	Actor     string    `json:"actor,omitempty"`
	ChangedAt time.Time `json:"changed_at,omitzero"`
	LastUsed  time.Time `json:"last_used,omitzero"`
	// Used is the last issue of each template to the agent.
	Used      map[string]time.Time `json:"used,omitempty"`
	Pattern   string               `json:"pattern,omitempty"`
	Owner     string               `json:"owner,omitempty"`
	Templates []string             `json:"templates,omitempty"`
}

// Agent actions (the last segment of POST /v1/agents/{id}/{action}).
const (
	ActionPause      = "pause"
	ActionQuarantine = "quarantine"
	ActionResume     = "resume"
)

// AgentPath is the path of an action on an agent, with the agent's SPIFFE
// ID escaped into one segment.
func AgentPath(agentID, action string) string {
	return "/v1/agents/" + url.PathEscape(agentID) + "/" + action
}

// AgentActionRequest is the body of POST /v1/agents/{id}/pause,
// /quarantine and /resume.
type AgentActionRequest struct {
	Reason string `json:"reason"`
}

// AgentResponse is the agent's record after an action.
type AgentResponse struct {
	Agent Agent `json:"agent"`
}

// FreezeRequest is the body of POST /v1/freeze: On true starts the global
// emergency freeze (every task denied), false ends it. On is required.
type FreezeRequest struct {
	On     *bool  `json:"on"`
	Reason string `json:"reason"`
}

// FreezeResponse is the freeze after the change.
type FreezeResponse struct {
	Freeze Freeze `json:"freeze"`
}

// Freeze is the global emergency freeze.
type Freeze struct {
	Active bool      `json:"active"`
	Reason string    `json:"reason,omitempty"`
	Actor  string    `json:"actor,omitempty"`
	Since  time.Time `json:"since,omitzero"`
}

// AuditQuery pages through the audit log: events after sequence number
// After, optionally only those of one agent (as actor or subject) or of
// some types.
type AuditQuery struct {
	After uint64
	// Limit bounds the events returned (0: DefaultListLimit; at most
	// MaxListLimit).
	Limit int
	Agent string
	Types []string
}

// Values encodes q as query parameters.
func (q AuditQuery) Values() url.Values {
	v := url.Values{}
	if q.After != 0 {
		v.Set("after", strconv.FormatUint(q.After, 10))
	}
	if q.Limit != 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	setNonEmpty(v, "agent", q.Agent)
	setNonEmpty(v, "type", strings.Join(q.Types, ","))
	return v
}

// AuditResponse is one page of the audit log. Next is the sequence number
// to pass as after for the next page; More says whether the log goes on
// past it (so far).
type AuditResponse struct {
	Events []Event `json:"events"`
	Next   uint64  `json:"next"`
	More   bool    `json:"more"`
}

// EventsQuery filters GET /v1/events. After (or the Last-Event-ID header)
// replays the events after that sequence number first; zero streams from
// now on.
type EventsQuery struct {
	Agent string
	Types []string
	After uint64
}

// Values encodes q as query parameters.
func (q EventsQuery) Values() url.Values {
	v := url.Values{}
	setNonEmpty(v, "agent", q.Agent)
	setNonEmpty(v, "type", strings.Join(q.Types, ","))
	if q.After != 0 {
		v.Set("after", strconv.FormatUint(q.After, 10))
	}
	return v
}

// Event is one audit record. Seq numbers the chain; Hash covers the
// event and PrevHash.
type Event struct {
	Seq      uint64            `json:"seq"`
	Time     time.Time         `json:"time"`
	Type     string            `json:"type"`
	Actor    string            `json:"actor,omitempty"`
	Subject  string            `json:"subject,omitempty"`
	Task     string            `json:"task,omitempty"`
	Lease    string            `json:"lease,omitempty"`
	Outcome  string            `json:"outcome,omitempty"`
	Reasons  []string          `json:"reasons,omitempty"`
	Details  map[string]string `json:"details,omitempty"`
	PrevHash string            `json:"prev_hash"`
	Hash     string            `json:"hash"`
}

// Decision is the policy's answer to a request, with the rule-by-rule
// trace: what POST /v1/explain returns.
type Decision struct {
	Outcome         string            `json:"outcome"` // allow, deny, approval_required
	Agent           string            `json:"agent"`
	AgentPattern    string            `json:"agent_pattern,omitempty"`
	Owner           string            `json:"owner,omitempty"`
	Task            string            `json:"task"`
	TemplateVersion string            `json:"template_version,omitempty"`
	Backend         string            `json:"backend,omitempty"`
	BackendType     string            `json:"backend_type,omitempty"`
	Params          map[string]string `json:"params,omitempty"`
	Tier            string            `json:"tier,omitempty"`
	TierWhy         []string          `json:"tier_why,omitempty"`
	Approvals       int               `json:"approvals"`
	Alert           bool              `json:"alert,omitempty"`
	TTL             Duration          `json:"ttl"`
	MaxTTL          Duration          `json:"max_ttl"`
	Rendered        Rendered          `json:"rendered"`
	Reasons         []Reason          `json:"reasons,omitempty"`
	Trace           []Step            `json:"trace"`
	NextAllowedAt   time.Time         `json:"next_allowed_at,omitzero"`
	EvaluatedAt     time.Time         `json:"evaluated_at"`
}

// Rendered is what the template renders for a request: what would be
// minted.
type Rendered struct {
	Policy string            `json:"policy,omitempty"`
	Path   string            `json:"path,omitempty"`
	Vars   map[string]string `json:"vars,omitempty"`
	Names  *Names            `json:"names,omitempty"`
}

// Names are rendered certificate names.
type Names struct {
	CommonName string   `json:"common_name"`
	AltNames   []string `json:"alt_names,omitempty"`
	URISANs    []string `json:"uri_sans,omitempty"`
	IPSANs     []string `json:"ip_sans,omitempty"`
}

// Reason is one reason for a decision.
type Reason struct {
	Code          string    `json:"code"`
	Message       string    `json:"message"`
	Window        string    `json:"window,omitempty"`
	NextAllowedAt time.Time `json:"next_allowed_at,omitzero"`
}

// Step is one rule of a decision's trace.
type Step struct {
	Rule   string `json:"rule"`
	Result string `json:"result"`
	Detail string `json:"detail"`
}

// Health is the body of /healthz and of a ready /readyz.
type Health struct {
	Status string `json:"status"`
}

func setNonEmpty(v url.Values, k, s string) {
	if s != "" {
		v.Set(k, s)
	}
}

// Kinds of identity (WhoAmI.Kind).
const (
	KindSPIFFE      = "spiffe"       // an X.509- or JWT-SVID
	KindPerson      = "person"       // a person signed in with latch login
	KindAdminSocket = "admin_socket" // latch's local admin socket
)

// WhoAmI is GET /v1/whoami: who latch takes the caller for.
type WhoAmI struct {
	ID    string   `json:"id"` // SPIFFE ID, issuer#subject, or admin-socket
	Kind  string   `json:"kind"`
	Email string   `json:"email,omitempty"`
	Roles []string `json:"roles,omitempty"` // operator roles, now
	Agent bool     `json:"agent,omitempty"` // an agents: entry governs the ID
}

// TasksResponse is GET /v1/tasks: the tasks the calling agent may ask for.
type TasksResponse struct {
	Tasks []Task `json:"tasks"`
}

// Task is one task template granted to the caller, as an agent (or the
// model behind it) needs it to ask well.
type Task struct {
	Name        string      `json:"name"`
	Description string      `json:"description,omitempty"`
	Risk        string      `json:"risk"` // the template's base tier; escalation may raise it
	Params      []TaskParam `json:"params,omitempty"`
	// Approval says whether a request would wait for people now: "yes",
	// "no", "denied" (it would be denied now: a freeze, a pause), or
	// "depends" when the parameters decide (one has no default).
	Approval string `json:"approval"`
}

// TaskParam is one parameter of a task and what it admits.
type TaskParam struct {
	Name        string   `json:"name"`
	Description string   `json:"description,omitempty"`
	Enum        []string `json:"enum,omitempty"`
	Pattern     string   `json:"pattern,omitempty"`
	Default     string   `json:"default,omitempty"`
}

// ToolCall is POST /v1/tool-calls: an agent's MCP server (latch mcp)
// reports a tool call of its model, audited before it acts on it.
type ToolCall struct {
	Client  string `json:"client"` // the MCP client's name, as it gave it
	Tool    string `json:"tool"`
	Task    string `json:"task,omitempty"`
	TraceID string `json:"trace_id,omitempty"`
}

// ToolCallResponse answers a ToolCall once it is in the audit log.
type ToolCallResponse struct {
	Audited bool `json:"audited"`
}

// Params are a request's task parameters: names to string values. A
// value that is not a JSON string is refused naming the parameter
// (params.ticket), not the whole map.
type Params map[string]string

// UnmarshalJSON decodes the parameters one by one.
func (p *Params) UnmarshalJSON(b []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	if raw == nil {
		*p = nil
		return nil
	}
	out := make(Params, len(raw))
	for k, v := range raw {
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return &json.UnmarshalTypeError{Value: jsonKind(v), Type: reflect.TypeFor[string](), Field: k} // encoding/json puts "params." before it
		}
		out[k] = s
	}
	*p = out
	return nil
}

// jsonKind names the kind of a JSON value, as encoding/json's errors do.
func jsonKind(v json.RawMessage) string {
	switch v = bytes.TrimSpace(v); {
	case len(v) == 0:
		return "value"
	case v[0] == '{':
		return "object"
	case v[0] == '[':
		return "array"
	case v[0] == 't' || v[0] == 'f':
		return "bool"
	case v[0] == '"':
		return "string"
	}
	return "number"
}
