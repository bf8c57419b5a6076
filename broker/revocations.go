package broker

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"time"
)

// ProcessRevocations makes one pass over the due revocations, calling the
// backends with bounded concurrency. It returns how many were confirmed.
func (s Leases) ProcessRevocations(ctx context.Context) (int, error) {
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
func (s *core) revokeOne(ctx context.Context, r Revocation) bool {
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
	result := "ok"
	if errors.Is(err, ErrExpiresOnItsOwn) {
		s.log.Warn("a revocation found nothing to revoke; the credential, if any, expires on its own", "lease", l.ID, "expires_at", l.ExpiresAt)
		result, err = "expires", nil
	}
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
		s.metrics.RevocationDone(result)
		return true
	}

	r.Attempts++
	r.LastError = err.Error()
	r.NextAttempt = now.Add(s.backoff(r.Attempts))
	l.LastError = r.LastError
	c := Change{Enqueue: []Revocation{r}, PutLeases: []*Lease{l}}
	result = "retry"
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
func (s *core) backoff(attempt int) time.Duration {
	d := s.cfg.RetryBase
	for i := 1; i < attempt && d < s.cfg.RetryMax; i++ {
		d *= 2
	}
	d = min(d, s.cfg.RetryMax)
	jitter := time.Duration(rand.Int64N(int64(d)/2+1)) - d/4
	return d + jitter
}
