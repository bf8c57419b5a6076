package broker

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// duePerPass bounds the revocations one pass takes: enough that a bulk
// revocation of 10,000 leases meets each group's parent in one pass.
const duePerPass = 10_000

// ProcessRevocations makes one pass over the due revocations, calling the
// backends with bounded concurrency: one call per lease, and one per group
// for the leases queued by group. It returns how many were confirmed.
func (s Leases) ProcessRevocations(ctx context.Context) (int, error) {
	due, err := s.store.DueRevocations(ctx, s.now(), duePerPass)
	if err != nil {
		return 0, err
	}
	var jobs []func() int
	groups := map[string][]Revocation{}
	for _, r := range due {
		switch {
		case r.Group == "":
			jobs = append(jobs, func() int { return s.revokeOne(ctx, r) })
		case groups[r.Group] == nil:
			jobs = append(jobs, func() int { return s.revokeGroup(ctx, r.Group, groups[r.Group]) })
			fallthrough
		default:
			groups[r.Group] = append(groups[r.Group], r)
		}
	}
	sem := make(chan struct{}, s.cfg.RevokeConcurrency)
	var wg sync.WaitGroup
	var done atomic.Int64
	for _, job := range jobs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			done.Add(int64(job()))
		})
	}
	wg.Wait()
	if n, err := s.store.QueueDepth(ctx); err == nil {
		s.metrics.QueueDepth(n)
	}
	return int(done.Load()), nil
}

// queued is a revocation with its lease.
type queued struct {
	r Revocation
	l *Lease
}

// revokeOne tries one queued revocation and records the result; it
// returns 1 when confirmed.
func (s *core) revokeOne(ctx context.Context, r Revocation) int {
	l, err := s.store.Lease(ctx, r.LeaseID)
	if err != nil {
		s.log.Error("queued revocation without its lease", "lease", r.LeaseID, "err", err)
		return 0
	}
	backend, ok := s.backends[l.Backend]
	if !ok {
		err = errors.New("backend " + l.Backend + " is not configured")
	} else {
		rctx, cancel := context.WithTimeout(ctx, s.cfg.MintTimeout)
		err = backend.Revoke(rctx, l.Refs)
		cancel()
	}
	result := "ok"
	if errors.Is(err, ErrExpiresOnItsOwn) {
		s.log.Warn("a revocation found nothing to revoke; the credential, if any, expires on its own", "lease", l.ID, "expires_at", l.ExpiresAt)
		result, err = "expires", nil
	}
	if err != nil {
		s.revocationFailed(ctx, queued{r, l}, err)
		return 0
	}
	return s.revoked(ctx, []queued{{r, l}}, nil, result)
}

// revokeGroup revokes a group's parent for the revocations queued by
// group, and records every lease of the group as revoked: those queued and
// any active one that committed between the selection and the group's
// retirement. It returns how many queued revocations were confirmed.
func (s *core) revokeGroup(ctx context.Context, group string, rs []Revocation) int {
	qs := make([]queued, 0, len(rs))
	for _, r := range rs {
		l, err := s.store.Lease(ctx, r.LeaseID)
		if err != nil {
			s.log.Error("queued revocation without its lease", "lease", r.LeaseID, "err", err)
			continue
		}
		qs = append(qs, queued{r, l})
	}
	if len(qs) == 0 {
		return 0
	}
	g := s.grouper(qs[0].l)
	err := errors.New("backend " + qs[0].l.Backend + " does not group")
	if g != nil {
		// The group was retired before these were queued: no lease joins
		// it any more, so the stragglers are all there are.
		var stragglers []*Lease
		stragglers, err = s.activeInGroup(ctx, qs[0].l.Agent, group)
		if err == nil {
			members := make([]Refs, 0, len(qs)+len(stragglers))
			for _, q := range qs {
				members = append(members, q.l.Refs)
			}
			for _, l := range stragglers {
				members = append(members, l.Refs)
			}
			rctx, cancel := context.WithTimeout(ctx, s.cfg.MintTimeout)
			err = g.RevokeGroup(rctx, group, members)
			cancel()
		}
		if err == nil {
			return s.revoked(ctx, qs, stragglers, "ok")
		}
	}
	for _, q := range qs {
		s.revocationFailed(ctx, q, err)
	}
	return 0
}

// activeInGroup lists agent's active leases in group.
func (s *core) activeInGroup(ctx context.Context, agent, group string) ([]*Lease, error) {
	all, err := s.store.Leases(ctx, LeaseFilter{Agent: agent, State: StateActive})
	if err != nil {
		return nil, err
	}
	var out []*Lease
	for _, l := range all {
		if l.Refs.Group == group {
			out = append(out, l)
		}
	}
	return out, nil
}

// revoked records confirmed revocations, and the active leases of a
// revoked group (stragglers, revoked for the first revocation's reason),
// in batches; it returns how many of qs were recorded.
func (s *core) revoked(ctx context.Context, qs []queued, stragglers []*Lease, result string) int {
	failpoint("revoke-after-backend")
	now := s.now()
	n := len(qs) // the queued ones; stragglers follow
	for _, l := range stragglers {
		qs = append(qs, queued{Revocation{LeaseID: l.ID, Reason: qs[0].r.Reason, Actor: qs[0].r.Actor, Group: l.Refs.Group}, l})
	}
	done := 0
	for start := 0; start < len(qs); start += revokeBatch {
		batch := qs[start:min(start+revokeBatch, len(qs))]
		var c Change
		confirmed := 0
		for i, q := range batch {
			typ, state := EventRevoked, StateRevoked
			if q.r.Expiry {
				typ, state = EventExpire, StateExpired
			}
			q.l.State, q.l.EndedAt, q.l.LastError = state, now, ""
			details := map[string]string{"reason": q.r.Reason, "requested_by": q.r.Actor}
			if q.r.Group != "" {
				details["group"] = q.r.Group
			}
			if start+i < n {
				c.Dequeue = append(c.Dequeue, q.l.ID)
				confirmed++
			}
			c.PutLeases = append(c.PutLeases, q.l)
			c.Events = append(c.Events, Event{Type: typ, Actor: "latch", Subject: q.l.Agent, Task: q.l.Task, Lease: q.l.ID,
				Outcome: string(state), Details: details})
		}
		if _, err := s.apply(ctx, c); err != nil {
			// Revoking again is harmless (Revoke is idempotent): the queue
			// entries stay and the next pass records them.
			s.log.Error("record confirmed revocations", "leases", len(batch), "err", err)
			continue
		}
		for range confirmed {
			s.metrics.RevocationDone(result)
		}
		done += confirmed
	}
	return done
}

// revocationFailed records a failed try: retried with backoff, never
// dropped, and listed as irrevocable after MaxAttempts.
func (s *core) revocationFailed(ctx context.Context, q queued, err error) {
	r, l := q.r, q.l
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
