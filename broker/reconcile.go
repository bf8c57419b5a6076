package broker

import (
	"context"
	"errors"
	"sync"
	"time"
)

// inflight is the set of intents that a live request of this process
// owns: reconciliation leaves those alone, however old they are.
type inflight struct {
	mu  sync.Mutex
	ids map[string]struct{}
}

// hold marks id owned until the returned release is called.
func (f *inflight) hold(id string) (release func()) {
	f.mu.Lock()
	if f.ids == nil {
		f.ids = map[string]struct{}{}
	}
	f.ids[id] = struct{}{}
	f.mu.Unlock()
	return func() {
		f.mu.Lock()
		delete(f.ids, id)
		f.mu.Unlock()
	}
}

func (f *inflight) owned(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.ids[id]
	return ok
}

// Reconcile finishes what no live request owns: intents (a mint that was
// started but never committed) left by a crash, by a request whose commit
// failed or by a replica that is no longer alive (Config.LiveReplicas),
// are revoked through the refs they hold, or marked failed when they hold
// none. It then queues the live leases of quarantined agents (a crash
// between a quarantine and its revocations), and the leases that expired
// while latch was down, and collects the shared policies nothing names
// any more (CollectPolicies). RunDuties calls it at start and every
// Config.ReconcileEvery; a request in flight is never touched.
func (s Leases) Reconcile(ctx context.Context) error {
	if err := s.reconcileIntents(ctx, true); err != nil {
		return err
	}
	if err := s.requarantine(ctx); err != nil {
		return err
	}
	if _, err := s.Sweep(ctx); err != nil {
		return err
	}
	if _, err := s.ProcessRevocations(ctx); err != nil {
		return err
	}
	// Shared policies are only garbage: a failure to collect them costs
	// Vault storage, never a request, so it does not stop reconciliation.
	if _, err := s.CollectPolicies(ctx); err != nil {
		s.log.Warn("collect unused shared policies", "err", err)
	}
	if err := s.collectGroups(ctx); err != nil {
		s.log.Warn("collect retired groups", "err", err)
	}
	if err := s.forgetEnded(ctx); err != nil {
		s.log.Warn("forget the records of ended leases", "err", err)
	}
	return nil
}

// forgetPass bounds the leases one reconciliation forgets; the rest wait
// for the next.
const forgetPass = 100_000

// forgetEnded deletes the records of the leases that ended more than
// Config.KeepEnded ago, on a store that can (Forgetter).
func (s *core) forgetEnded(ctx context.Context) error {
	f, ok := s.store.(Forgetter)
	if !ok || s.cfg.KeepEnded <= 0 {
		return nil
	}
	before := s.now().Add(-s.cfg.KeepEnded)
	n, err := f.ForgetEnded(ctx, before, forgetPass)
	if n > 0 {
		s.log.Info("forgot the records of ended leases", "leases", n, "ended_before", before.UTC().Format(time.RFC3339))
	}
	return err
}

// reconcileIntents ends the intents of this replica that none of its
// requests owns and, with others, those of replicas no longer alive.
func (s *core) reconcileIntents(ctx context.Context, others bool) error {
	intents, err := stored(s.store.Intents(ctx))
	if err != nil {
		return err
	}
	// Listed after the intents: the replica that wrote one of them was
	// alive, and listed, when it wrote it.
	var live map[string]bool
	if others && s.cfg.LiveReplicas != nil {
		if live, err = s.cfg.LiveReplicas(ctx); err != nil {
			return unavailable("the list of live replicas", err)
		}
	}
	for _, l := range intents {
		mine := l.Replica == s.cfg.Replica
		if mine && s.inflight.owned(l.ID) || !mine && (!others || live[l.Replica]) {
			continue // a live request commits or fails it itself
		}
		if err := s.reconcileIntent(ctx, l); err != nil {
			return err
		}
	}
	return nil
}

// reconcileIntent ends one orphaned intent: queued for revocation when it
// names something in the backend, failed when it names nothing.
func (s *core) reconcileIntent(ctx context.Context, l *Lease) error {
	now := s.now()
	ev := Event{Type: EventReconcile, Actor: "latch", Subject: l.Agent, Task: l.Task, Lease: l.ID}
	// Conditional: its request may have committed since the listing.
	c := Change{DeleteIntents: []string{l.ID}, PutLeases: []*Lease{l}, Conditions: &Conditions{Intent: l.ID}}
	l.RevokeReason, l.Withheld = "latch stopped during issue", true
	if l.Refs.IsZero() {
		// Stopped before the backend was called (or before it named
		// anything): nothing exists to revoke.
		l.State, l.EndedAt = StateFailed, now
		ev.Outcome = "failed"
	} else {
		l.State = StateRevoking
		c.Enqueue = []Revocation{{LeaseID: l.ID, Reason: l.RevokeReason, Actor: "latch", NextAttempt: now}}
		ev.Outcome = "revoking"
		// Its credential may exist unrecorded under the group's parent:
		// the group takes nothing more, and is collected once empty.
		c.RetireGroups = s.retireGroupOf(l)
	}
	c.Events = []Event{ev}
	_, err := s.apply(ctx, c)
	var failed *ConditionFailed
	if errors.As(err, &failed) {
		return nil
	}
	return err
}

// requarantine queues the active leases of every quarantined agent.
func (s Leases) requarantine(ctx context.Context) error {
	agents, err := stored(s.store.Agents(ctx))
	if err != nil {
		return err
	}
	for _, a := range agents {
		if a.State != AgentQuarantined {
			continue
		}
		leases, err := s.Selected(ctx, RevokeSelector{Agent: a.ID})
		if err == nil {
			err = s.queueRevocations(ctx, "latch", "agent quarantined: "+a.Reason, EventRevoke, leases, queueFlags{byGroup: true})
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Run runs RunReplica and RunDuties together, for a Service that has its
// store to itself, until ctx ends. ready, if not nil, is closed once the
// first reconciliation is done.
func (s *Service) Run(ctx context.Context, ready chan<- struct{}) error {
	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { s.RunReplica(rctx) })
	return s.RunDuties(ctx, ready)
}

// RunDuties runs the background duties, which one replica at a time must
// run: it reconciles, then sweeps expired leases and approvals and works
// the revocation queue every second (at once when woken), and reconciles
// again every Config.ReconcileEvery, until ctx ends. ready, if not nil, is
// closed once the first reconciliation is done.
func (s *Service) RunDuties(ctx context.Context, ready chan<- struct{}) error {
	leases := s.Leases()
	if err := leases.Reconcile(ctx); err != nil {
		return err
	}
	if ready != nil {
		close(ready)
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	lastReconcile := time.Now()
	for {
		gone := false
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-s.kick:
		case <-s.replicaGone:
			gone = true
		}
		if gone || time.Since(lastReconcile) >= s.cfg.ReconcileEvery {
			lastReconcile = time.Now()
			if err := leases.Reconcile(ctx); err != nil {
				s.log.Error("reconcile", "err", err)
			}
			continue
		}
		if _, err := leases.Sweep(ctx); err != nil {
			s.log.Error("expiry sweep", "err", err)
		}
		if _, err := leases.ProcessRevocations(ctx); err != nil {
			s.log.Error("revocation queue", "err", err)
		}
	}
}

// ReplicaGone tells the duties that a replica has left
// (Config.LiveReplicas no longer names it): RunDuties reconciles at once
// what it had in flight, instead of at the next Config.ReconcileEvery.
func (s *Service) ReplicaGone() {
	select {
	case s.replicaGone <- struct{}{}:
	default:
	}
}

// RunReplica does what every replica does for itself, until ctx ends: it
// writes the summaries of its coalesced refusals every second (and those
// still open at the end), reconciles its own intents every
// Config.ReconcileEvery and, on a store other replicas write too
// (EventWatcher), takes in their events (watchReplicas).
func (s *Service) RunReplica(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	if w, ok := s.store.(EventWatcher); ok {
		wg.Go(func() { s.watchReplicas(ctx, w) })
	}
	defer s.flushCoalesced(context.WithoutCancel(ctx), true)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	lastReconcile := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		s.flushCoalesced(ctx, false)
		if time.Since(lastReconcile) >= s.cfg.ReconcileEvery {
			lastReconcile = time.Now()
			if err := s.reconcileIntents(ctx, false); err != nil {
				s.log.Error("reconcile this replica's intents", "err", err)
			}
		}
	}
}
