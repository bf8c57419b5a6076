package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/latchbroker/latch/notify"
)

// runBackground starts what runs beside the API until ctx ends: the
// Vault token's renewal, the metrics' counts, and the service's loops.
// With a store of its own the server runs them all and is ready once the
// first reconciliation is done. On etcd every replica runs its own loop
// (broker.Service.RunReplica) and is ready at once, and the duties run on
// the replica elected for them, fenced by the election.
func (s *Server) runBackground(ctx context.Context, pauser *notify.AutoPause) {
	s.bg.Add(2)
	go func() { defer s.bg.Done(); _ = s.vault.Run(ctx) }()
	s.bg.Go(func() { s.watchSetup(ctx) })
	go func() { defer s.bg.Done(); s.metrics.TrackCounts(ctx, s.store, 15*time.Second) }()
	es, replicated := s.store.(*etcdStore)
	if !replicated {
		s.bg.Go(func() {
			s.runDuties(ctx, pauser, func(ctx context.Context) error { return s.service.Run(ctx, s.ready) })
		})
		return
	}
	close(s.ready)
	s.bg.Go(func() { s.service.RunReplica(ctx) })
	s.bg.Go(func() { s.stopOnLostSession(ctx, es) })
	s.bg.Go(func() {
		dctx, err := es.elect(ctx)
		if err != nil {
			if ctx.Err() == nil {
				s.fail(fmt.Errorf("store.etcd: campaign for the duties: %w", err))
			}
			return
		}
		s.log.Info("elected to run the background duties", "replica", es.replica)
		go es.watchGone(dctx, s.service.ReplicaGone)
		s.runDuties(dctx, pauser, func(ctx context.Context) error { return s.service.RunDuties(ctx, nil) })
	})
}

// setupRecheck is how often a server whose Vault setup is incomplete
// checks it again.
const setupRecheck = 30 * time.Second

// watchSetup checks latch's Vault setup (checkSetup) until it is
// complete: till then the server is not ready, and each new set of
// missing pieces is logged, one error line each, naming the fix.
func (s *Server) watchSetup(ctx context.Context) {
	last := ""
	for {
		checks, err := checkSetup(ctx, s.vault, s.backends, s.service.Policy())
		problems := problemsOf(checks)
		if err == nil && len(problems) == 0 {
			s.setupErr.Store(nil)
			s.log.Info("vault: everything latch needs is in place", "checks", len(checks))
			return
		}
		var summary string
		if err != nil {
			summary = "cannot check latch's Vault setup: " + err.Error()
		} else {
			whats := make([]string, len(problems))
			for i, p := range problems {
				whats[i] = p.For + ": " + p.What
			}
			summary = "latch's Vault setup is incomplete: " + strings.Join(whats, "; ")
		}
		s.setupErr.Store(&summary)
		if summary != last {
			last = summary
			for _, p := range problems {
				s.log.Error("vault: latch lacks what it needs to mint; not ready", "for", p.For, "missing", p.What, "fix", p.Fix)
			}
			if err != nil {
				s.log.Warn("vault: cannot check latch's setup; not ready", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(setupRecheck):
		}
	}
}

// runDuties runs what one replica at a time must run, until ctx ends:
// service (the service's duties), the checkpointer, auto-pause and the
// webhook notifier, which would each act twice if two replicas ran them.
func (s *Server) runDuties(ctx context.Context, pauser *notify.AutoPause, service func(context.Context) error) {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		if err := service(ctx); err != nil {
			s.log.Error("reconciliation failed", "err", err)
			s.fail(fmt.Errorf("reconcile: %w", err))
		}
	})
	cp := &checkpointer{audit: s.service.Audit(), svids: s.source, every: s.cfg.Audit.CheckpointEvery,
		interval: s.cfg.Audit.CheckpointInterval, file: s.cfg.Audit.CheckpointFile, log: s.log}
	wg.Go(func() { cp.run(ctx) })
	if pauser != nil {
		wg.Go(func() { _ = pauser.Run(ctx, s.service.Audit(), s.service) })
	}
	if s.notifier != nil {
		wg.Go(func() {
			if err := s.notifier.Run(ctx, s.service.Audit()); err != nil {
				s.log.Error("webhook notifier stopped", "err", err)
			}
		})
	}
}

// stopOnLostSession ends Run when the replica's etcd session ends (etcd
// unreachable for its TTL): the other replicas take it for dead by then
// — another runs its duties, its requests' intents are reconciled — and
// its duties' writes are fenced already.
func (s *Server) stopOnLostSession(ctx context.Context, es *etcdStore) {
	select {
	case <-es.lost():
		s.fail(errors.New("store.etcd: lost this replica's etcd session (etcd unreachable for its TTL): the other replicas took it for dead; restart it"))
	case <-ctx.Done():
	}
}

// fail ends Run with err, unless it is ending already.
func (s *Server) fail(err error) {
	select {
	case s.runErr <- err:
	default:
	}
}
