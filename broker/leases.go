package broker

import (
	"cmp"
	"context"
	"errors"
	"strings"
)

// RevokeSelector says which leases to revoke; exactly one field is set.
type RevokeSelector struct {
	Lease    string
	Agent    string
	Task     string
	Template string // a template's name: everything issued under any of its versions
	All      bool
	// Version narrows Template to one version: its hash (sha256:...), or
	// a prefix of it as latch lease list prints it.
	Version string
}

func (sel RevokeSelector) validate() error {
	n := 0
	for _, set := range []bool{sel.Lease != "", sel.Agent != "", sel.Task != "", sel.Template != "", sel.All} {
		if set {
			n++
		}
	}
	if n != 1 {
		return Errorf(EINVALID, "say which leases to revoke: exactly one of a lease ID, agent, task, template or all")
	}
	if sel.Version != "" && sel.Template == "" {
		return Errorf(EINVALID, "a template version narrows a template: name the template too")
	}
	return nil
}

// revokeBatch bounds how many leases one store change holds.
const revokeBatch = 500

// Revoke queues the revocation of every live lease sel matches and returns
// how many were queued. The queue is durable: revocations survive restarts
// and are retried until the backend confirms. Errors: EINVALID for a bad
// selector, ENOTFOUND for an unknown lease ID, EUNAVAILABLE when the
// store cannot record.
func (s Leases) Revoke(ctx context.Context, actor, reason string, sel RevokeSelector) (int, error) {
	leases, err := s.Selected(ctx, sel)
	if err != nil {
		return 0, err
	}
	return len(leases), s.queueRevocations(ctx, actor, reason, EventRevoke, leases, revokeByGroup(sel))
}

// queueFlags say how queueRevocations queues: as expiries (the leases end
// expired) and by group (a selector that takes whole groups).
type queueFlags struct{ expiry, byGroup bool }

// revokeByGroup: every selector but one lease takes whole groups, since a
// group is one agent's leases of one task and template version.
func revokeByGroup(sel RevokeSelector) queueFlags { return queueFlags{byGroup: sel.Lease == ""} }

// Selected lists the active leases sel selects: what Revoke would queue
// (a dry run shows them).
func (s Leases) Selected(ctx context.Context, sel RevokeSelector) ([]*Lease, error) {
	if err := sel.validate(); err != nil {
		return nil, err
	}
	if sel.Lease != "" {
		l, err := s.Get(ctx, sel.Lease)
		if err != nil || l.State != StateActive {
			return nil, err
		}
		return []*Lease{l}, nil
	}
	// A task is the template of the same name.
	task := cmp.Or(sel.Task, sel.Template)
	all, err := s.List(ctx, LeaseFilter{Agent: sel.Agent, Task: task, State: StateActive})
	if err != nil || sel.Version == "" {
		return all, err
	}
	var out []*Lease
	for _, l := range all {
		if strings.HasPrefix(l.TemplateVersion, sel.Version) {
			out = append(out, l)
		}
	}
	return out, nil
}

// queueRevocations moves leases to revoking and queues them, in batches,
// each lease with its audit event. By group, the leases of a Grouper's
// backend are left to one revocation per group instead (queueGroups).
func (s *core) queueRevocations(ctx context.Context, actor, reason string, typ EventType, leases []*Lease, f queueFlags) error {
	now := s.now()
	if f.byGroup {
		var err error
		if leases, err = s.queueGroups(ctx, actor, reason, typ, leases); err != nil {
			return err
		}
	}
	for start := 0; start < len(leases); start += revokeBatch {
		batch := leases[start:min(start+revokeBatch, len(leases))]
		var c Change
		for _, l := range batch {
			l.State = StateRevoking
			l.RevokeReason = reason
			c.PutLeases = append(c.PutLeases, l)
			c.Enqueue = append(c.Enqueue, Revocation{LeaseID: l.ID, Reason: reason, Actor: actor, NextAttempt: now, Expiry: f.expiry})
			c.Events = append(c.Events, Event{Type: typ, Actor: actor, Subject: l.Agent, Task: l.Task, Lease: l.ID,
				Outcome: "queued", Details: map[string]string{"reason": reason}})
		}
		if _, err := s.apply(ctx, c); err != nil {
			return err
		}
	}
	s.wake()
	return nil
}

// Release ends an agent's own lease early (the agent is done with it).
// Errors: ENOTFOUND when the lease does not exist or is not the agent's
// (the two are not told apart), ECONFLICT when it is no longer active.
func (s Leases) Release(ctx context.Context, agent, leaseID string) error {
	l, err := s.ownLease(ctx, agent, leaseID)
	if err != nil {
		return err
	}
	if l.State != StateActive {
		return Errorf(ECONFLICT, "lease %s is %s", l.ID, l.State)
	}
	return s.queueRevocations(ctx, agent, "released by the agent", EventRelease, []*Lease{l}, queueFlags{})
}

func (s *core) ownLease(ctx context.Context, agent, leaseID string) (*Lease, error) {
	l, err := s.store.Lease(ctx, leaseID)
	if errors.Is(err, ErrLeaseNotFound) || (err == nil && l.Agent != agent) {
		return nil, Errorf(ENOTFOUND, "no lease %s of yours", leaseID)
	}
	if err != nil {
		return nil, unavailable("the lease store", err)
	}
	return l, nil
}

// Sweep queues the revocation of every active lease past its expiry and
// expires the approvals past their deadline (Approvals.Expire); it returns
// how many leases and approvals it ended. Run calls it every second;
// tests call it with an injected clock.
func (s Leases) Sweep(ctx context.Context) (int, error) {
	// An approval that cannot be expired must not hold up the leases.
	total, approvalErr := Approvals{s.core}.Expire(ctx)
	for {
		leases, err := s.store.ExpiringBefore(ctx, s.now(), revokeBatch)
		if err != nil || len(leases) == 0 {
			return total, errors.Join(approvalErr, err)
		}
		if err := s.queueRevocations(ctx, "latch", "expired", EventExpire, leases, queueFlags{expiry: true}); err != nil {
			return total, errors.Join(approvalErr, err)
		}
		total += len(leases)
	}
}

// Get returns one lease. Errors: ENOTFOUND, EUNAVAILABLE.
func (s Leases) Get(ctx context.Context, id string) (*Lease, error) {
	l, err := s.store.Lease(ctx, id)
	return storedRecord(l, err, ErrLeaseNotFound, "no lease "+id)
}

// List lists leases matching f, newest first.
func (s Leases) List(ctx context.Context, f LeaseFilter) ([]*Lease, error) {
	return stored(s.store.Leases(ctx, f))
}

// CountByTask counts the leases in state, by task: cheap enough to run
// every few seconds over a million leases.
func (s Leases) CountByTask(ctx context.Context, state LeaseState) (map[string]int, error) {
	return stored(s.store.CountByTask(ctx, state))
}
