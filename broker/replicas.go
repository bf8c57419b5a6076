package broker

import (
	"context"
	"fmt"
	"time"
)

// EventWatcher is an optional extension of Store, for a store that other
// latch replicas write too (broker/etcdstore): it tells a replica of the
// events every replica makes durable.
type EventWatcher interface {
	// WatchEvents calls started once it watches, then fn with the events
	// made durable from then on, by any replica, in Seq order, until ctx
	// ends or the watch breaks (its error; watch again). fn must not
	// block for long.
	WatchEvents(ctx context.Context, started func(), fn func([]Event)) error
}

// Forgetter is an optional extension of Store, for a store whose space
// is bounded (etcd's quota): it deletes the records of leases that ended
// long ago. Their audit events stay in the audit log.
type Forgetter interface {
	// ForgetEnded deletes up to limit (0: all) leases that ended
	// (revoked, expired, failed) before t, with their index entries, and
	// returns how many.
	ForgetEnded(ctx context.Context, before time.Time, limit int) (int, error)
}

// watchRetry is how long a replica waits before watching again after
// the watch broke (etcd unreachable).
const watchRetry = time.Second

// watchReplicas takes in the events of every replica, until ctx ends:
// into the live feed (SSE, webhooks and tails then see them, in Seq
// order, with Follow's gap reads for what the watch missed), the agent
// states and the freeze every request reads first, the long polls of the
// approvals they decide, and the revocation queue, woken when one is
// queued. Each time it starts watching it reads the agent states and the
// freeze again, so that what changed while it was not watching is known.
func (s *core) watchReplicas(ctx context.Context, w EventWatcher) {
	for {
		err := w.WatchEvents(ctx, func() { s.reload(ctx) }, s.fromReplicas)
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("watch the replicas' events; watching again", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(watchRetry):
		}
	}
}

// fromReplicas takes in events that any replica (this one too) made
// durable. A state this replica set itself arrives again: a no-op.
func (s *core) fromReplicas(events []Event) {
	s.publish(events)
	for _, e := range events {
		switch e.Type {
		case EventPause, EventQuarantine, EventResume:
			s.mu.Lock()
			s.agents[e.Subject] = AgentState(e.Outcome)
			s.mu.Unlock()
		case EventFreeze, EventUnfreeze:
			s.mu.Lock()
			s.frozen = e.Type == EventFreeze
			s.mu.Unlock()
		case EventRevoke:
			s.wake()
		}
		if id := e.Details["approval_id"]; id != "" {
			s.approvalWaiters.notify(id)
		}
	}
}

// reload reads the agent states and the freeze again (loadStates).
func (s *core) reload(ctx context.Context) {
	if err := s.loadStates(ctx); err != nil {
		s.log.Warn("reload the agent states and the freeze", "err", err)
	}
}

// loadStates reads the agent states and the freeze from the store into
// the copies every request reads.
func (s *core) loadStates(ctx context.Context) error {
	records, err := s.store.Agents(ctx)
	if err != nil {
		return fmt.Errorf("broker: load agent states: %w", err)
	}
	fr, err := s.store.Freeze(ctx)
	if err != nil {
		return fmt.Errorf("broker: load freeze: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range records {
		s.agents[r.ID] = r.State
	}
	s.frozen = fr.Active
	return nil
}
