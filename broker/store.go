package broker

import (
	"context"
	"errors"
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
	PutAgents     []AgentRecord
	Freeze        *FreezeState
	PutApprovals  []*Approval // approval records, with their indexes
	Grants        []Grant     // when not nil, replaces the recorded grants
	Events        []Event     // appended to the audit chain, in order
}

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
