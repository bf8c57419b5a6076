package broker

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Store persists leases, intents, the revocation queue, agent states, the
// global freeze, approvals and the audit chain. broker/boltstore
// implements it on bbolt.
//
// Every write goes through Apply, which makes one Change durable as a
// whole — records and audit events together — so a lease is never
// committed without its audit event, nor an event without its change.
// Implementations group concurrent Applys into shared fsyncs.
type Store interface {
	// Apply makes c durable atomically and returns c.Events chained (Seq,
	// PrevHash, Hash set). On any error nothing of c is written; errors
	// wrap ErrStoreUnavailable when the store cannot write at all (disk
	// full, read-only, closed).
	Apply(ctx context.Context, c Change) ([]Event, error)

	// Lease returns one lease; ErrLeaseNotFound when there is none.
	Lease(ctx context.Context, id string) (*Lease, error)
	// Leases returns the leases that match f, newest first.
	Leases(ctx context.Context, f LeaseFilter) ([]*Lease, error)
	// CountByTask counts the leases in state, by task, without reading
	// the leases themselves.
	CountByTask(ctx context.Context, state LeaseState) (map[string]int, error)
	// LeaseByRequest returns the lease an agent's request_id produced, for
	// idempotent retries; ErrLeaseNotFound when there is none.
	LeaseByRequest(ctx context.Context, agent, requestID string) (*Lease, error)
	// ExpiringBefore returns active leases whose ExpiresAt is before t,
	// soonest first, at most limit.
	ExpiringBefore(ctx context.Context, t time.Time, limit int) ([]*Lease, error)

	// Intents returns the leases whose mint was started but never
	// committed nor abandoned: what reconciliation must finish.
	Intents(ctx context.Context) ([]*Lease, error)

	// PolicyUse returns the shared policies (Refs.Policy) that intents
	// and live leases (pending, active, revoking, irrevocable) name —
	// what a PolicyCollector must not delete — and those marked deleting,
	// and the groups (Refs.Group) they name.
	PolicyUse(ctx context.Context) (PolicyUse, error)

	// RetiredGroups returns the groups marked retired (At is when).
	RetiredGroups(ctx context.Context) ([]RetiredGroup, error)
	// DueRevocations returns queued revocations whose NextAttempt is not
	// after now, earliest first, at most limit.
	DueRevocations(ctx context.Context, now time.Time, limit int) ([]Revocation, error)
	// QueueDepth is the number of queued revocations.
	QueueDepth(ctx context.Context) (int, error)

	// Agent returns what latch remembers of one agent; a zero record with
	// State AgentActive when nothing.
	Agent(ctx context.Context, id string) (AgentRecord, error)
	// Agents returns every agent latch has a record of.
	Agents(ctx context.Context) ([]AgentRecord, error)
	// Freeze returns the global freeze.
	Freeze(ctx context.Context) (FreezeState, error)

	// Events calls fn for each audit event with Seq > after, in order,
	// until fn returns false or an error.
	Events(ctx context.Context, after uint64, fn func(Event) (bool, error)) error
	// LastEvent returns the newest audit event, nil when there is none.
	LastEvent(ctx context.Context) (*Event, error)

	// Approval returns one approval; ErrApprovalNotFound when there is
	// none.
	Approval(ctx context.Context, id string) (*Approval, error)
	// Approvals returns the approvals that match f, newest first.
	Approvals(ctx context.Context, f ApprovalFilter) ([]*Approval, error)
	// ApprovalByRequest returns the newest approval an agent's request_id
	// produced, for idempotent retries; ErrApprovalNotFound when there is
	// none.
	ApprovalByRequest(ctx context.Context, agent, requestID string) (*Approval, error)
	// ExpiringApprovals returns open approvals whose deadline (ExpiresAt
	// while pending, PickupBy once approved) is before now, soonest first,
	// at most limit.
	ExpiringApprovals(ctx context.Context, now time.Time, limit int) ([]*Approval, error)
	// CountApprovals counts the approvals in status, from an index.
	CountApprovals(ctx context.Context, status ApprovalStatus) (int, error)

	// Grants returns the grants recorded by the last Change with Grants.
	Grants(ctx context.Context) ([]Grant, error)

	Close() error
}

// Change is one atomic write to the Store. Puts overwrite by ID.
type Change struct {
	PutIntents    []*Lease // a lease being minted: stored before the backend is called
	DeleteIntents []string // intents finished (committed, failed or revoked)
	PutLeases     []*Lease // lease records, with their indexes
	Enqueue       []Revocation
	Dequeue       []string // lease IDs whose revocation is done
	// AgentStates set State, Reason, Actor and ChangedAt of each agent;
	// the stored usage (LastUsed, Used) is kept.
	AgentStates []AgentRecord
	// Uses record the last issue of a template to an agent; the stored
	// state is kept, so a commit can never undo a pause.
	Uses         []Use
	Freeze       *FreezeState
	PutApprovals []*Approval       // approval records, with their indexes
	Grants       []Grant           // when not nil, replaces the recorded grants
	Templates    map[string]string // when not nil, replaces the recorded template versions (name → version)
	Events       []Event           // appended to the audit chain, in order
	// MarkDeleting marks shared policies as being deleted, only when no
	// intent or live lease names them (else *ConditionFailed
	// policy_in_use and nothing is written); from then on an intent
	// that names one fails with policy_deleting until DoneDeleting
	// clears the mark, once the backend has deleted it.
	MarkDeleting []string
	DoneDeleting []string
	// RetireGroups marks groups (Refs.Group) as retired, when a bulk
	// revocation queues them or reconciliation finds an intent of theirs:
	// from then on a change whose Conditions name one fails with
	// group_retired. ForgetGroups drops marks.
	RetireGroups []RetiredGroup
	ForgetGroups []string

	// Conditions, when set, are checked in the transaction that writes
	// the change, against the state before it: when one fails, nothing of
	// the change is written and Apply returns a *ConditionFailed.
	Conditions *Conditions
}

// PolicyUse is what Store.PolicyUse reports.
type PolicyUse struct {
	Live     map[string]bool
	Deleting []string
	// LiveGroups are the groups (Refs.Group) intents and live leases name.
	LiveGroups map[string]bool
}

// RetiredGroup is a group's mark: which backend's group, and when the
// mark was made (set by the store).
type RetiredGroup struct {
	Group, Backend string
	At             time.Time
}

// Use is one issue of a template to an agent.
type Use struct {
	Agent    string
	Template string
	At       time.Time
}

// Conditions are what a change that issues, picks up or renews needs of
// the stored state when it commits. Checking them in the same transaction
// is what lets an operator's stop win every race with a request in flight:
// a pause, quarantine or freeze committed before the change makes it fail,
// and one committed after it sees its lease.
type Conditions struct {
	// Agent, when set, must be neither paused nor quarantined.
	Agent string
	// NotFrozen requires the global freeze to be off.
	NotFrozen bool
	// Template, when set, must be recorded at TemplateVersion (see
	// Change.Templates): a reload that removed or changed it fails the
	// change.
	Template        string
	TemplateVersion string
	// MaxActive and MaxActiveTask, when positive, bound what Agent holds
	// before the change: its live leases and intents (pending, active,
	// revoking, irrevocable), all of them and those of Template.
	MaxActive     int
	MaxActiveTask int
	// LeaseActive, when set, is a lease that must still be active (a
	// renewal must not bring a revoked lease back).
	LeaseActive string
	// Intent, when set, is an intent that must still be stored
	// (reconciliation must not end a lease its request just committed).
	Intent string
	// Policy, when set, is a shared policy the change's intent names: it
	// must not be being deleted (Change.MarkDeleting).
	Policy string
	// Group, when set, is the group the change's lease is in: it must not
	// be retired (Change.RetireGroups).
	Group string
	// Approval, when set, is an approval as the change's writer read it:
	// it must still be stored as it was (two replicas reviewing, picking
	// up or expiring one at once: the later fails).
	Approval *ApprovalVersion
	// Request, when set, is the request the change's intent serves: no
	// other intent may hold it (request_in_flight: a retry is being
	// minted, on another replica), and no lease of it may have delivered
	// its secret (request_served: replay that one). Retries on one
	// replica wait for each other; this is what holds across replicas.
	Request *RequestClaim
}

// RequestClaim is one agent's request, by its request ID, as the intent
// Lease claims it.
type RequestClaim struct {
	Agent, RequestID, Lease string
}

// ApprovalVersion is what tells one state of an approval from the next:
// every change moves its status forward or adds a review.
type ApprovalVersion struct {
	ID      string
	Status  ApprovalStatus
	Reviews int
}

// Version is a's ApprovalVersion.
func (a *Approval) Version() *ApprovalVersion {
	return &ApprovalVersion{ID: a.ID, Status: a.Status, Reviews: len(a.Reviews)}
}

// Matches reports whether a stored approval (nil when none) is at v.
func (v *ApprovalVersion) Matches(a *Approval) bool {
	return a != nil && a.Status == v.Status && len(a.Reviews) == v.Reviews
}

// ConditionFailed is the error of a Change whose Conditions did not hold.
type ConditionFailed struct {
	// Reason is the condition's code: agent_paused, agent_quarantined,
	// global_freeze, template_changed, agent_budget, template_budget,
	// lease_not_active, intent_gone, policy_deleting, group_retired,
	// approval_changed, request_in_flight or request_served.
	Reason string
	// Held is, for a budget, how many leases the agent holds.
	Held int
}

func (e *ConditionFailed) Error() string {
	if e.Reason == ReasonAgentBudget || e.Reason == ReasonTemplateBudget {
		return fmt.Sprintf("condition failed: %s (%d held)", e.Reason, e.Held)
	}
	return "condition failed: " + e.Reason
}

// Reasons a Change's Conditions fail with, beside the agent states and
// the freeze (templates.ReasonAgentPaused, ReasonAgentQuarantined,
// ReasonGlobalFreeze).
const (
	ReasonTemplateChanged = "template_changed"
	ReasonAgentBudget     = "agent_budget"
	ReasonTemplateBudget  = "template_budget"
	ReasonLeaseNotActive  = "lease_not_active"
	ReasonIntentGone      = "intent_gone"
	ReasonPolicyDeleting  = "policy_deleting"
	ReasonPolicyInUse     = "policy_in_use"
	ReasonGroupRetired    = "group_retired"
	ReasonApprovalChanged = "approval_changed"
	ReasonRequestInFlight = "request_in_flight"
	ReasonRequestServed   = "request_served"
)

// Store errors.
var (
	// ErrLeaseNotFound is returned when no lease has the ID asked for.
	ErrLeaseNotFound = errors.New("lease not found")
	// ErrApprovalNotFound is returned when no approval has the ID asked
	// for.
	ErrApprovalNotFound = errors.New("approval not found")
	// ErrStoreUnavailable marks a store that cannot write: disk full,
	// read-only filesystem, or closed.
	ErrStoreUnavailable = errors.New("store unavailable")
)

// storedRecord is stored for a read of one record: the store's notFound
// becomes ENOTFOUND with msg.
func storedRecord[T any](v T, err, notFound error, msg string) (T, error) {
	if errors.Is(err, notFound) {
		var zero T
		return zero, &Error{Code: ENOTFOUND, Message: msg}
	}
	return stored(v, err)
}

// stored passes a read of the store through, its failure turned into
// the caller's EUNAVAILABLE (the cause logged, never sent).
func stored[T any](v T, err error) (T, error) {
	if err != nil {
		var zero T
		return zero, unavailable("the store", err)
	}
	return v, nil
}
