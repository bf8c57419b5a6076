package broker

import (
	"context"
	"errors"
)

// Lease returns one lease. Errors: ENOTFOUND, EUNAVAILABLE.
func (s *Service) Lease(ctx context.Context, id string) (*Lease, error) {
	l, err := s.store.Lease(ctx, id)
	if errors.Is(err, ErrLeaseNotFound) {
		return nil, Errorf(ENOTFOUND, "no lease %s", id)
	}
	if err != nil {
		return nil, unavailable("the lease store", err)
	}
	return l, nil
}

// Leases lists leases matching f, newest first.
func (s *Service) Leases(ctx context.Context, f LeaseFilter) ([]*Lease, error) {
	ls, err := s.store.Leases(ctx, f)
	if err != nil {
		return nil, unavailable("the lease store", err)
	}
	return ls, nil
}

// CountByTask counts the leases in state, by task: cheap enough to run
// every few seconds over a million leases.
func (s *Service) CountByTask(ctx context.Context, state LeaseState) (map[string]int, error) {
	counts, err := s.store.CountByTask(ctx, state)
	if err != nil {
		return nil, unavailable("the lease store", err)
	}
	return counts, nil
}

// CountApprovals counts the approvals in status.
func (s *Service) CountApprovals(ctx context.Context, status ApprovalStatus) (int, error) {
	n, err := s.store.CountApprovals(ctx, status)
	if err != nil {
		return 0, unavailable("the store", err)
	}
	return n, nil
}

// Agent returns what latch remembers of one agent: a record with only ID
// and state active when nothing.
func (s *Service) Agent(ctx context.Context, id string) (AgentRecord, error) {
	r, err := s.store.Agent(ctx, id)
	if err != nil {
		return AgentRecord{}, unavailable("the store", err)
	}
	return r, nil
}

// Agents lists every agent latch holds a record of (it got a credential,
// or an operator changed its state), with state and last use.
func (s *Service) Agents(ctx context.Context) ([]AgentRecord, error) {
	rs, err := s.store.Agents(ctx)
	if err != nil {
		return nil, unavailable("the store", err)
	}
	return rs, nil
}
