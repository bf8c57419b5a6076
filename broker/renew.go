package broker

import (
	"context"
	"errors"
	"time"

	"github.com/latchbroker/latch/templates"
)

// renewSlack is how close to its max TTL a lease counts as at its max.
const renewSlack = 3 * time.Second

// Renew extends an agent's own active lease by ttl from now (the
// template's TTL when 0), never past its max TTL. The request is decided
// again first, as a new one would be (approvals aside: the lease was
// approved once): a paused or quarantined agent, a global freeze, a deny
// window, or a template or grant removed by a reload refuses it with its
// reason, and a quarantined agent's lease is revoked. The commit is
// conditional like an issue's, so a stop that lands during the backend's
// renewal still refuses it.
//
// Errors: ENOTFOUND, EFORBIDDEN (denied, with reasons), ECONFLICT (not
// active, not renewable, at its max TTL, or the template changed),
// EUNAVAILABLE.
func (s Leases) Renew(ctx context.Context, agent, leaseID string, ttl time.Duration) (*Lease, error) {
	l, err := s.ownLease(ctx, agent, leaseID)
	if err != nil {
		return nil, err
	}
	// Decided first, so that a stopped agent hears why, whatever the
	// stop did to the lease.
	d, err := s.decideRenewal(ctx, l)
	if err != nil {
		return nil, err
	}
	if l.State != StateActive {
		return nil, Errorf(ECONFLICT, "lease %s is %s", l.ID, l.State)
	}
	want, err := renewTarget(l, ttl, s.now())
	if err != nil {
		return nil, err
	}
	expires, err := s.renewInBackend(ctx, l, want)
	if err != nil {
		return nil, err
	}
	l.ExpiresAt = expires
	c := Change{PutLeases: []*Lease{l}, Conditions: s.issueConditions(agent, d, false),
		Events: []Event{{Type: EventRenew, Actor: agent, Task: l.Task, Lease: l.ID, Outcome: "renewed",
			Details: map[string]string{"expires_at": expires.UTC().Format(time.RFC3339)}}}}
	c.Conditions.LeaseActive = l.ID
	_, err = s.apply(ctx, c)
	var failed *ConditionFailed
	if errors.As(err, &failed) {
		if failed.Reason == ReasonLeaseNotActive {
			return nil, Errorf(ECONFLICT, "lease %s was revoked while it was being renewed", l.ID)
		}
		// The backend extended the credential, but latch keeps the old
		// expiry and the sweeper revokes it then.
		return nil, conditionError(failed)
	}
	if err != nil {
		return nil, err
	}
	return l, nil
}

// decideRenewal evaluates the lease's request again now. A denial is
// audited; for a quarantined agent the lease is also revoked.
func (s *core) decideRenewal(ctx context.Context, l *Lease) (templates.Decision, error) {
	req := IssueRequest{Agent: l.Agent, Task: l.Task, Params: l.Params, Reason: "renew " + l.ID, TraceID: l.TraceID}
	d := s.policy.Load().Evaluate(s.templatesRequest(req))
	if d.Outcome != templates.Deny {
		return d, nil
	}
	s.deny(ctx, req, d)
	if s.agentState(l.Agent) == AgentQuarantined && l.State == StateActive {
		if err := s.queueRevocations(ctx, "latch", "renewal of a quarantined agent's lease", EventRevoke, []*Lease{l}, queueFlags{}); err != nil {
			s.log.Error("revoke a quarantined agent's lease", "lease", l.ID, "err", err)
		}
	}
	return d, deniedError(d)
}

// renewTarget is the new expiry a renewal by ttl asks for: never past the
// lease's max TTL. Errors: ECONFLICT when nothing is left to renew.
func renewTarget(l *Lease, ttl time.Duration, now time.Time) (time.Time, error) {
	if ttl <= 0 {
		ttl = l.ExpiresAt.Sub(l.IssuedAt)
	}
	want := now.Add(ttl)
	if want.After(l.MaxExpiresAt) {
		want = l.MaxExpiresAt
	}
	// Backends grant whole seconds counted on their own clock (Vault
	// counts a token's max TTL from its creation second), so a lease
	// renewed to its max TTL can end up a second or two short of it:
	// within renewSlack of the max there is nothing left to renew.
	if !want.After(l.ExpiresAt) || l.MaxExpiresAt.Sub(l.ExpiresAt) < renewSlack {
		return time.Time{}, Errorf(ECONFLICT, "lease %s is at its max TTL and cannot be renewed further", l.ID)
	}
	return want, nil
}

// renewInBackend asks the lease's backend for the extension and returns
// the expiry it granted, at most want.
func (s *core) renewInBackend(ctx context.Context, l *Lease, want time.Time) (time.Time, error) {
	r, ok := s.backends[l.Backend].(Renewer)
	if !ok {
		return time.Time{}, Errorf(ECONFLICT, "leases of backend %q cannot be renewed", l.Backend)
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.MintTimeout)
	defer cancel()
	expires, err := r.Renew(ctx, l.Refs, want.Sub(s.now()))
	switch {
	case errors.Is(err, ErrNotRenewable):
		return time.Time{}, Errorf(ECONFLICT, "lease %s is not renewable", l.ID)
	case errors.Is(err, ErrBackendUnavailable):
		return time.Time{}, &Error{Code: EUNAVAILABLE, Message: "the credential backend is unavailable; try again later", Err: err}
	case err != nil:
		return time.Time{}, &Error{Code: EINTERNAL, Message: "the credential backend refused the renewal", Err: err}
	}
	if expires.IsZero() || expires.After(want) {
		expires = want
	}
	return expires, nil
}
