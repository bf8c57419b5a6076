package broker

import (
	"context"
	"errors"
)

// Lease returns one lease. Errors: ENOTFOUND, EUNAVAILABLE.
func (s *Service) Lease(ctx context.Context, id string) (*Lease, error) {
	l, err := s.store.Lease(ctx, id)
	return storedRecord(l, err, ErrLeaseNotFound, "no lease "+id)
}

// Leases lists leases matching f, newest first.
func (s *Service) Leases(ctx context.Context, f LeaseFilter) ([]*Lease, error) {
	return stored(s.store.Leases(ctx, f))
}

// CountByTask counts the leases in state, by task: cheap enough to run
// every few seconds over a million leases.
func (s *Service) CountByTask(ctx context.Context, state LeaseState) (map[string]int, error) {
	return stored(s.store.CountByTask(ctx, state))
}

// CountApprovals counts the approvals in status.
func (s *Service) CountApprovals(ctx context.Context, status ApprovalStatus) (int, error) {
	return stored(s.store.CountApprovals(ctx, status))
}

// Agent returns what latch remembers of one agent: a record with only ID
// and state active when nothing.
func (s *Service) Agent(ctx context.Context, id string) (AgentRecord, error) {
	return stored(s.store.Agent(ctx, id))
}

// Agents lists every agent latch holds a record of (it got a credential,
// or an operator changed its state), with state and last use.
func (s *Service) Agents(ctx context.Context) ([]AgentRecord, error) {
	return stored(s.store.Agents(ctx))
}

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
