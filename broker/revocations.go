package broker

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// duePerPass bounds the revocations one pass takes.
const duePerPass = 1000

// ProcessRevocations makes one pass over the due revocations, calling the
// backends with bounded concurrency: one call per lease, one per group
// queued by group (see groups.go). Groups go first, so that a lease they
// end is not revoked again by a revocation of its own in the same pass.
// It returns how many leases were confirmed revoked.
func (s Leases) ProcessRevocations(ctx context.Context) (int, error) {
	due, err := s.store.DueRevocations(ctx, s.now(), duePerPass)
	if err != nil {
		return 0, err
	}
	var single []Revocation
	byAgent := map[string][]Revocation{} // group revocations
	var agents []Revocation              // the first of each agent's
	for _, r := range due {
		switch {
		case !isGroupEntry(r):
			single = append(single, r)
		case byAgent[r.Agent] == nil:
			agents = append(agents, r)
			fallthrough
		default:
			byAgent[r.Agent] = append(byAgent[r.Agent], r)
		}
	}
	done := s.run(agents, func(r Revocation) int { return s.revokeGroups(ctx, byAgent[r.Agent]) }) +
		s.run(single, func(r Revocation) int { return s.revokeOne(ctx, r) })
	if n, err := s.store.QueueDepth(ctx); err == nil {
		s.metrics.QueueDepth(n)
	}
	return done, nil
}

// run calls job for each of rs, RevokeConcurrency at a time, and sums
// what they return.
func (s *core) run(rs []Revocation, job func(Revocation) int) int {
	sem := make(chan struct{}, s.cfg.RevokeConcurrency)
	var wg sync.WaitGroup
	var done atomic.Int64
	for _, r := range rs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			done.Add(int64(job(r)))
		})
	}
	wg.Wait()
	return int(done.Load())
}

// revokeOne tries one queued revocation and records the result; it
// returns 1 when confirmed. A lease that has ended meanwhile (its group
// was revoked) is only dequeued.
func (s *core) revokeOne(ctx context.Context, r Revocation) int {
	l, err := s.store.Lease(ctx, r.LeaseID)
	if err != nil {
		s.log.Error("queued revocation without its lease", "lease", r.LeaseID, "err", err)
		return 0
	}
	if l.State == StateRevoked || l.State == StateExpired || l.State == StateFailed {
		if _, err := s.apply(ctx, Change{Dequeue: []string{l.ID}}); err != nil {
			s.log.Error("dequeue the revocation of an ended lease", "lease", l.ID, "err", err)
		}
		return 0
	}
	backend, ok := s.backends[l.Backend]
	if !ok {
		err = errors.New("backend " + l.Backend + " is not configured")
	} else {
		rctx, cancel := context.WithTimeout(ctx, s.cfg.MintTimeout)
		sctx, span := startSpan(rctx, "latch.revoke", attrAgent.String(l.Agent), attrTask.String(l.Task), attrLease.String(l.ID),
			attrBackend.String(l.Backend))
		err = backend.Revoke(sctx, l.Refs)
		endSpan(span, err)
		cancel()
	}
	result := "ok"
	if errors.Is(err, ErrExpiresOnItsOwn) {
		s.log.Warn("a revocation found nothing to revoke; the credential, if any, expires on its own", "lease", l.ID, "expires_at", l.ExpiresAt)
		result, err = "expires", nil
	}
	if err != nil {
		s.revocationFailed(ctx, r, l, err)
		return 0
	}
	failpoint("revoke-after-backend")
	return s.recordRevoked(ctx, r, []*Lease{l}, result, false) // l.ID is r's
}

// recordConcurrency bounds the batches recordRevoked writes at once: the
// store shares their commits.
const recordConcurrency = 4

// recordRevoked records leases as ended by r (revoked, or expired for an
// expiry) with their audit events, in batches written concurrently, and
// dequeues them; once all are written it dequeues r itself when dequeueR.
// It returns how many were recorded.
func (s *core) recordRevoked(ctx context.Context, r Revocation, leases []*Lease, result string, dequeueR bool) int {
	now := s.now()
	typ, state := EventRevoked, StateRevoked
	if r.Expiry {
		typ, state = EventExpire, StateExpired
	}
	details := map[string]string{"reason": r.Reason, "requested_by": r.Actor}
	if r.Group != "" {
		details["group"] = r.Group
	}
	var batches []Change
	for start := 0; start < len(leases); start += revokeBatch {
		var c Change
		for _, l := range leases[start:min(start+revokeBatch, len(leases))] {
			l.State, l.EndedAt, l.LastError = state, now, ""
			if l.RevokeReason == "" {
				l.RevokeReason = r.Reason // revoked with its group
			}
			c.PutLeases = append(c.PutLeases, l)
			c.Dequeue = append(c.Dequeue, l.ID)
			c.Events = append(c.Events, Event{Type: typ, Actor: "latch", Subject: l.Agent, Task: l.Task, Lease: l.ID,
				Outcome: string(state), Details: details})
		}
		batches = append(batches, c)
	}
	var done atomic.Int64
	var failed atomic.Bool
	sem := make(chan struct{}, recordConcurrency)
	var wg sync.WaitGroup
	for _, c := range batches {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if _, err := s.apply(ctx, c); err != nil {
				// Revoking again is harmless (Revoke is idempotent): the
				// queue entry stays and the next pass records the rest.
				s.log.Error("record confirmed revocations", "leases", len(c.PutLeases), "err", err)
				failed.Store(true)
				return
			}
			for range c.PutLeases {
				s.metrics.RevocationDone(result)
			}
			done.Add(int64(len(c.PutLeases)))
		})
	}
	wg.Wait()
	if dequeueR && !failed.Load() {
		if _, err := s.apply(ctx, Change{Dequeue: []string{r.LeaseID}}); err != nil {
			s.log.Error("dequeue a finished revocation", "revocation", r.LeaseID, "err", err)
		}
	}
	return int(done.Load())
}

// revocationFailed records a failed try: retried with backoff, never
// dropped, and listed as irrevocable after MaxAttempts.
func (s *core) revocationFailed(ctx context.Context, r Revocation, l *Lease, err error) {
	r.Attempts++
	r.LastError = err.Error()
	r.NextAttempt = s.now().Add(s.backoff(r.Attempts))
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
}

// backoff is exponential from RetryBase, capped at RetryMax, with ±25 %
// jitter so that a Vault outage does not end in a thundering herd.
func (s *core) backoff(attempt int) time.Duration {
	d := s.cfg.RetryBase
	for i := 1; i < attempt && d < s.cfg.RetryMax; i++ {
		d *= 2
	}
	d = min(d, s.cfg.RetryMax)
	jitter := time.Duration(rand.Int64N(int64(d)/2+1)) - d/4
	return d + jitter
}
