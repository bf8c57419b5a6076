package broker

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"time"
)

// RevokeSelector says which leases to revoke; exactly one field is set.
type RevokeSelector struct {
	Lease    string
	Agent    string
	Task     string
	Template string // a template version hash (sha256:...): everything issued under it
	All      bool
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
	return nil
}

// revokeBatch bounds how many leases one store change holds.
const revokeBatch = 500

// Revoke queues the revocation of every live lease sel matches and returns
// how many were queued. The queue is durable: revocations survive restarts
// and are retried until the backend confirms. Errors: EINVALID for a bad
// selector, ENOTFOUND for an unknown lease ID, EUNAVAILABLE when the
// store cannot record.
func (s *Service) Revoke(ctx context.Context, actor, reason string, sel RevokeSelector) (int, error) {
	leases, err := s.Selected(ctx, sel)
	if err != nil {
		return 0, err
	}
	return len(leases), s.queueRevocations(ctx, actor, reason, EventRevoke, leases, false)
}

// Selected lists the active leases sel selects: what Revoke would queue
// (a dry run shows them).
func (s *Service) Selected(ctx context.Context, sel RevokeSelector) ([]*Lease, error) {
	if err := sel.validate(); err != nil {
		return nil, err
	}
	if sel.Lease != "" {
		l, err := s.Lease(ctx, sel.Lease)
		if err != nil || l.State != StateActive {
			return nil, err
		}
		return []*Lease{l}, nil
	}
	all, err := s.Leases(ctx, LeaseFilter{Agent: sel.Agent, Task: sel.Task, State: StateActive})
	if err != nil {
		return nil, err
	}
	var out []*Lease
	for _, l := range all {
		if sel.Template == "" || l.TemplateVersion == sel.Template {
			out = append(out, l)
		}
	}
	return out, nil
}

// queueRevocations moves leases to revoking and queues them, in batches,
// each lease with its audit event.
func (s *Service) queueRevocations(ctx context.Context, actor, reason string, typ EventType, leases []*Lease, expiry bool) error {
	now := s.now()
	for start := 0; start < len(leases); start += revokeBatch {
		batch := leases[start:min(start+revokeBatch, len(leases))]
		var c Change
		for _, l := range batch {
			l.State = StateRevoking
			l.RevokeReason = reason
			c.PutLeases = append(c.PutLeases, l)
			c.Enqueue = append(c.Enqueue, Revocation{LeaseID: l.ID, Reason: reason, Actor: actor, NextAttempt: now, Expiry: expiry})
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
func (s *Service) Release(ctx context.Context, agent, leaseID string) error {
	l, err := s.ownLease(ctx, agent, leaseID)
	if err != nil {
		return err
	}
	if l.State != StateActive {
		return Errorf(ECONFLICT, "lease %s is %s", l.ID, l.State)
	}
	return s.queueRevocations(ctx, agent, "released by the agent", EventRelease, []*Lease{l}, false)
}

func (s *Service) ownLease(ctx context.Context, agent, leaseID string) (*Lease, error) {
	l, err := s.store.Lease(ctx, leaseID)
	if errors.Is(err, ErrLeaseNotFound) || (err == nil && l.Agent != agent) {
		return nil, Errorf(ENOTFOUND, "no lease %s of yours", leaseID)
	}
	if err != nil {
		return nil, unavailable("the lease store", err)
	}
	return l, nil
}

// renewSlack is how close to its max TTL a lease counts as at its max.
const renewSlack = 3 * time.Second

// Renew extends an agent's own active lease by ttl from now (the
// template's TTL when 0), never past its max TTL. Errors: ENOTFOUND,
// ECONFLICT (not active, not renewable, or at its max TTL), EUNAVAILABLE.
func (s *Service) Renew(ctx context.Context, agent, leaseID string, ttl time.Duration) (*Lease, error) {
	l, err := s.ownLease(ctx, agent, leaseID)
	if err != nil {
		return nil, err
	}
	if l.State != StateActive {
		return nil, Errorf(ECONFLICT, "lease %s is %s", l.ID, l.State)
	}
	now := s.now()
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
		return nil, Errorf(ECONFLICT, "lease %s is at its max TTL and cannot be renewed further", l.ID)
	}
	r, ok := s.backends[l.Backend].(Renewer)
	if !ok {
		return nil, Errorf(ECONFLICT, "leases of backend %q cannot be renewed", l.Backend)
	}
	ctx2, cancel := context.WithTimeout(ctx, s.cfg.MintTimeout)
	defer cancel()
	expires, err := r.Renew(ctx2, l.Refs, want.Sub(now))
	switch {
	case errors.Is(err, ErrNotRenewable):
		return nil, Errorf(ECONFLICT, "lease %s is not renewable", l.ID)
	case errors.Is(err, ErrBackendUnavailable):
		return nil, &Error{Code: EUNAVAILABLE, Message: "the credential backend is unavailable; try again later", Err: err}
	case err != nil:
		return nil, &Error{Code: EINTERNAL, Message: "the credential backend refused the renewal", Err: err}
	}
	if expires.IsZero() || expires.After(want) {
		expires = want
	}
	l.ExpiresAt = expires
	_, err = s.apply(ctx, Change{PutLeases: []*Lease{l}, Events: []Event{{Type: EventRenew, Actor: agent, Task: l.Task,
		Lease: l.ID, Outcome: "renewed", Details: map[string]string{"expires_at": expires.UTC().Format(time.RFC3339)}}}})
	if err != nil {
		return nil, err
	}
	return l, nil
}

// SetAgentState pauses, quarantines or resumes an agent. Quarantine also
// revokes every live lease the agent holds. Errors: EINVALID for an
// unknown state, EUNAVAILABLE.
func (s *Service) SetAgentState(ctx context.Context, actor, agent string, state AgentState, reason string) error {
	typ := map[AgentState]EventType{AgentPaused: EventPause, AgentQuarantined: EventQuarantine, AgentActive: EventResume}[state]
	if typ == "" {
		return Errorf(EINVALID, "unknown agent state %q (want active, paused or quarantined)", state)
	}
	rec, err := s.store.Agent(ctx, agent)
	if err != nil {
		return unavailable("the store", err)
	}
	rec.ID, rec.State, rec.Reason, rec.Actor, rec.ChangedAt = agent, state, reason, actor, s.now()
	// Update the in-memory state first under the lock, so that no request
	// is decided with the old state once the change is being written.
	s.mu.Lock()
	old, had := s.agents[agent]
	s.agents[agent] = state
	s.mu.Unlock()
	_, err = s.apply(ctx, Change{PutAgents: []AgentRecord{rec}, Events: []Event{{Type: typ, Actor: actor, Subject: agent,
		Outcome: string(state), Details: map[string]string{"reason": reason}}}})
	if err != nil {
		s.mu.Lock()
		if had {
			s.agents[agent] = old
		} else {
			delete(s.agents, agent)
		}
		s.mu.Unlock()
		return err
	}
	if state == AgentQuarantined {
		_, err = s.Revoke(ctx, actor, "agent quarantined: "+reason, RevokeSelector{Agent: agent})
	}
	return err
}

// SetFreeze starts or ends the global emergency freeze, which denies every
// task while on.
func (s *Service) SetFreeze(ctx context.Context, actor string, on bool, reason string) error {
	typ := EventUnfreeze
	if on {
		typ = EventFreeze
	}
	fs := FreezeState{Active: on, Reason: reason, Actor: actor, Since: s.now()}
	s.mu.Lock()
	old := s.frozen
	s.frozen = on
	s.mu.Unlock()
	_, err := s.apply(ctx, Change{Freeze: &fs, Events: []Event{{Type: typ, Actor: actor, Outcome: map[bool]string{true: "on", false: "off"}[on],
		Details: map[string]string{"reason": reason}}}})
	if err != nil {
		s.mu.Lock()
		s.frozen = old
		s.mu.Unlock()
	}
	return err
}

// Sweep queues the revocation of every active lease past its expiry and
// expires the approvals past their deadline (ExpireApprovals); it returns
// how many leases and approvals it ended. Run calls it every second;
// tests call it with an injected clock.
func (s *Service) Sweep(ctx context.Context) (int, error) {
	// An approval that cannot be expired must not hold up the leases.
	total, approvalErr := s.ExpireApprovals(ctx)
	for {
		leases, err := s.store.ExpiringBefore(ctx, s.now(), revokeBatch)
		if err != nil || len(leases) == 0 {
			return total, errors.Join(approvalErr, err)
		}
		if err := s.queueRevocations(ctx, "latch", "expired", EventExpire, leases, true); err != nil {
			return total, errors.Join(approvalErr, err)
		}
		total += len(leases)
	}
}

// ProcessRevocations makes one pass over the due revocations, calling the
// backends with bounded concurrency. It returns how many were confirmed.
func (s *Service) ProcessRevocations(ctx context.Context) (int, error) {
	due, err := s.store.DueRevocations(ctx, s.now(), 1000)
	if err != nil {
		return 0, err
	}
	sem := make(chan struct{}, s.cfg.RevokeConcurrency)
	var wg sync.WaitGroup
	var mu sync.Mutex
	done := 0
	for _, r := range due {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if s.revokeOne(ctx, r) {
				mu.Lock()
				done++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if n, err := s.store.QueueDepth(ctx); err == nil {
		s.metrics.QueueDepth(n)
	}
	return done, nil
}

// revokeOne tries one queued revocation and records the result.
func (s *Service) revokeOne(ctx context.Context, r Revocation) bool {
	l, err := s.store.Lease(ctx, r.LeaseID)
	if err != nil {
		s.log.Error("queued revocation without its lease", "lease", r.LeaseID, "err", err)
		return false
	}
	backend, ok := s.backends[l.Backend]
	if !ok {
		err = errors.New("backend " + l.Backend + " is not configured")
	} else {
		rctx, cancel := context.WithTimeout(ctx, s.cfg.MintTimeout)
		err = backend.Revoke(rctx, l.Refs)
		cancel()
	}
	now := s.now()
	if err == nil {
		failpoint("revoke-after-backend")
		typ, state := EventRevoked, StateRevoked
		if r.Expiry {
			typ, state = EventExpire, StateExpired
		}
		l.State, l.EndedAt, l.LastError = state, now, ""
		_, err := s.apply(ctx, Change{Dequeue: []string{l.ID}, PutLeases: []*Lease{l}, Events: []Event{{Type: typ,
			Actor: "latch", Subject: l.Agent, Task: l.Task, Lease: l.ID, Outcome: string(state),
			Details: map[string]string{"reason": r.Reason, "requested_by": r.Actor}}}})
		if err != nil {
			// Revoking again is harmless (Revoke is idempotent): the queue
			// entry stays and the next pass records it.
			s.log.Error("record a confirmed revocation", "lease", l.ID, "err", err)
			return false
		}
		s.metrics.RevocationDone("ok")
		return true
	}

	r.Attempts++
	r.LastError = err.Error()
	r.NextAttempt = now.Add(s.backoff(r.Attempts))
	l.LastError = r.LastError
	c := Change{Enqueue: []Revocation{r}, PutLeases: []*Lease{l}}
	result := "retry"
	if r.Attempts == s.cfg.MaxAttempts {
		// Listed for operators, and still retried at the longest interval:
		// never dropped.
		l.State = StateIrrevocable
		result = "irrevocable"
		c.Events = []Event{{Type: EventIrrevocable, Actor: "latch", Subject: l.Agent, Task: l.Task, Lease: l.ID,
			Outcome: "irrevocable", Details: map[string]string{"last_error": r.LastError}}}
	}
	s.log.Warn("revocation failed", "lease", l.ID, "attempt", r.Attempts, "next", r.NextAttempt, "err", err)
	if _, err := s.apply(ctx, c); err != nil {
		s.log.Error("record a failed revocation", "lease", l.ID, "err", err)
	}
	s.metrics.RevocationDone(result)
	return false
}

// backoff is exponential from RetryBase, capped at RetryMax, with ±25 %
// jitter so that a Vault outage does not end in a thundering herd.
func (s *Service) backoff(attempt int) time.Duration {
	d := s.cfg.RetryBase
	for i := 1; i < attempt && d < s.cfg.RetryMax; i++ {
		d *= 2
	}
	d = min(d, s.cfg.RetryMax)
	jitter := time.Duration(rand.Int64N(int64(d)/2+1)) - d/4
	return d + jitter
}

// Reconcile finishes what a crash interrupted: every intent (a mint that
// was started but never committed) is revoked through the refs it holds,
// or marked failed when it holds none. It then queues leases that expired
// while latch was down. Run calls it first.
func (s *Service) Reconcile(ctx context.Context) error {
	intents, err := s.store.Intents(ctx)
	if err != nil {
		return err
	}
	now := s.now()
	for _, l := range intents {
		ev := Event{Type: EventReconcile, Actor: "latch", Subject: l.Agent, Task: l.Task, Lease: l.ID}
		c := Change{DeleteIntents: []string{l.ID}, PutLeases: []*Lease{l}}
		l.RevokeReason = "latch stopped during issue"
		if l.Refs.IsZero() {
			// Stopped before the backend was called (or before it named
			// anything): nothing exists to revoke.
			l.State, l.EndedAt = StateFailed, now
			ev.Outcome = "failed"
		} else {
			l.State = StateRevoking
			c.Enqueue = []Revocation{{LeaseID: l.ID, Reason: l.RevokeReason, Actor: "latch", NextAttempt: now}}
			ev.Outcome = "revoking"
		}
		c.Events = []Event{ev}
		if _, err := s.apply(ctx, c); err != nil {
			return err
		}
	}
	if _, err := s.Sweep(ctx); err != nil {
		return err
	}
	_, err = s.ProcessRevocations(ctx)
	return err
}

// Run reconciles, then sweeps expired leases and works the revocation
// queue until ctx ends. ready, if not nil, is closed once reconciliation
// is done.
func (s *Service) Run(ctx context.Context, ready chan<- struct{}) error {
	if err := s.Reconcile(ctx); err != nil {
		return err
	}
	if ready != nil {
		close(ready)
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-s.kick:
		}
		if _, err := s.Sweep(ctx); err != nil {
			s.log.Error("expiry sweep", "err", err)
		}
		if _, err := s.ProcessRevocations(ctx); err != nil {
			s.log.Error("revocation queue", "err", err)
		}
	}
}
