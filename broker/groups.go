package broker

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
)

// Groups (Grouper): a bulk revocation revokes each group's parent once.
// A group is retired in the store — no lease commits in it any more —
// when a bulk revocation queues its leases, and when reconciliation finds
// an intent of it, whose credential may exist unrecorded under the
// parent. collectGroups revokes the parent of every retired group that no
// live lease names: what a crash left in it dies then.

// RetiredFor is how long a group's mark is kept once its parent is
// revoked. The mark fails the commit of a lease minted in the group while
// its parent was being revoked, so it need only outlive the mints in
// flight at that moment (each bounded by MintTimeout); an hour is ample.
const RetiredFor = time.Hour

// grouper is l's backend when it groups and l is in a group.
func (s *core) grouper(l *Lease) Grouper {
	g, ok := s.backends[l.Backend].(Grouper)
	if !ok || l.Refs.Group == "" {
		return nil
	}
	return g
}

// retireGroupOf returns l's group to retire, forgotten by its backend
// first (no new credential joins it); none when l is in no group.
func (s *core) retireGroupOf(l *Lease) []RetiredGroup {
	g := s.grouper(l)
	if g == nil {
		return nil
	}
	g.ForgetGroup(l.Refs.Group)
	return []RetiredGroup{{Group: l.Refs.Group, Backend: l.Backend}}
}

// collectedGroups are the retired groups whose parent this process has
// revoked, so that reconciliation does not revoke them again each time.
type collectedGroups struct {
	mu   sync.Mutex
	done map[string]bool
}

func (c *collectedGroups) has(g string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.done[g]
}

func (c *collectedGroups) add(g string, collected bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		c.done = map[string]bool{}
	}
	if collected {
		c.done[g] = true
	} else {
		delete(c.done, g)
	}
}

// collectGroups revokes the parent of each retired group that nothing
// live names, and drops the marks of collected groups older than
// RetiredFor.
func (s *core) collectGroups(ctx context.Context) error {
	marks, err := s.store.RetiredGroups(ctx)
	if err != nil || len(marks) == 0 {
		return err
	}
	// A group whose revocation is queued names its leases still live
	// (they stay active until it is done), so it is skipped here; once
	// none is live, revoking its parent again is harmless.
	use, err := s.store.PolicyUse(ctx)
	if err != nil {
		return err
	}
	var drop []string
	for _, m := range marks {
		if use.LiveGroups[m.Group] {
			continue
		}
		if !s.collected.has(m.Group) {
			g, ok := s.backends[m.Backend].(Grouper)
			if !ok {
				continue // its backend is gone from the config: nothing to call
			}
			rctx, cancel := context.WithTimeout(ctx, s.cfg.MintTimeout)
			err := g.RevokeGroup(rctx, m.Group, nil)
			cancel()
			if err != nil {
				s.log.Warn("revoke a retired group's parent", "group", m.Group, "err", err)
				continue
			}
			s.collected.add(m.Group, true)
		}
		if s.now().Sub(m.At) > RetiredFor {
			drop = append(drop, m.Group)
		}
	}
	if len(drop) == 0 {
		return nil
	}
	if _, err := s.apply(ctx, Change{ForgetGroups: drop}); err != nil {
		return err
	}
	for _, g := range drop {
		s.collected.add(g, false)
	}
	return nil
}

// groupEntryPrefix starts the queue key of a group's revocation: no lease
// ID (a ULID) can take that form.
const groupEntryPrefix = "group/"

func isGroupEntry(r Revocation) bool {
	return r.Group != "" && r.LeaseID == groupEntryPrefix+r.Group
}

// queueGroups queues one revocation per group of leases, for a revocation
// by agent, task, template or all, and returns the leases that are in no
// group (for one revocation each). In one change, each group is retired
// (no lease commits in it any more: each backend forgets it first) and
// its revocation queued with one audit event naming the group and how
// many of its leases were selected. The leases stay active until their
// group's parent is revoked: then each is recorded revoked, with its own
// event (revokeGroup).
func (s *core) queueGroups(ctx context.Context, actor, reason string, typ EventType, leases []*Lease) ([]*Lease, error) {
	var rest []*Lease
	count, task := map[string]int{}, map[string]string{}
	var c Change
	for _, l := range leases {
		if s.grouper(l) == nil {
			rest = append(rest, l)
			continue
		}
		if count[l.Refs.Group]++; count[l.Refs.Group] > 1 {
			continue
		}
		task[l.Refs.Group] = l.Task
		c.RetireGroups = append(c.RetireGroups, s.retireGroupOf(l)...)
		c.Enqueue = append(c.Enqueue, Revocation{LeaseID: groupEntryPrefix + l.Refs.Group, Group: l.Refs.Group,
			Agent: l.Agent, Backend: l.Backend, Reason: reason, Actor: actor, NextAttempt: s.now()})
	}
	for _, r := range c.Enqueue {
		c.Events = append(c.Events, Event{Type: typ, Actor: actor, Subject: r.Agent, Task: task[r.Group],
			Outcome: "queued", Details: map[string]string{"reason": reason, "group": r.Group, "leases": strconv.Itoa(count[r.Group])}})
	}
	if len(c.Enqueue) == 0 {
		return rest, nil
	}
	_, err := s.apply(ctx, c)
	return rest, err
}

// revokeGroups works one agent's group revocations, concurrently, reading
// the agent's live leases once.
func (s *core) revokeGroups(ctx context.Context, rs []Revocation) int {
	members, err := s.liveByGroup(ctx, rs[0].Agent)
	if err != nil {
		for _, r := range rs {
			s.groupRevocationFailed(ctx, r, err)
		}
		return 0
	}
	return s.run(rs, func(r Revocation) int { return s.revokeGroup(ctx, r, members[r.Group]) })
}

// revokeGroup works one group's revocation: the group's parent is revoked
// once, with every credential under it, and each of members (the group's
// leases still live) is recorded revoked with its audit event; it returns
// how many. The group was retired when it was queued, so no lease joins
// it any more: members are all there are. On failure it is retried with
// backoff, never dropped; the leases stay as they are (their credential
// still lives) until it succeeds.
func (s *core) revokeGroup(ctx context.Context, r Revocation, members []*Lease) int {
	g, ok := s.backends[r.Backend].(Grouper)
	if !ok {
		s.groupRevocationFailed(ctx, r, errors.New("backend "+r.Backend+" does not group"))
		return 0
	}
	refs := make([]Refs, len(members))
	for i, l := range members {
		refs[i] = l.Refs
	}
	rctx, cancel := context.WithTimeout(ctx, s.cfg.MintTimeout)
	sctx, span := startSpan(rctx, "latch.revoke", attrBackend.String(r.Backend), attribute.Int("latch.leases", len(members)))
	err := g.RevokeGroup(sctx, r.Group, refs)
	endSpan(span, err)
	cancel()
	if err != nil {
		s.groupRevocationFailed(ctx, r, err)
		return 0
	}
	failpoint("revoke-after-backend")
	return s.recordRevoked(ctx, r, members, "ok", true)
}

// liveByGroup returns agent's leases that have not ended, by group.
func (s *core) liveByGroup(ctx context.Context, agent string) (map[string][]*Lease, error) {
	out := map[string][]*Lease{}
	for _, state := range []LeaseState{StateActive, StateRevoking, StateIrrevocable} {
		leases, err := s.store.Leases(ctx, LeaseFilter{Agent: agent, State: state})
		if err != nil {
			return nil, err
		}
		for _, l := range leases {
			if l.Refs.Group != "" {
				out[l.Refs.Group] = append(out[l.Refs.Group], l)
			}
		}
	}
	return out, nil
}

// groupRevocationFailed requeues a group's revocation with backoff, with
// an irrevocable event for the group once it reaches MaxAttempts.
func (s *core) groupRevocationFailed(ctx context.Context, r Revocation, err error) {
	r.Attempts++
	r.LastError = err.Error()
	r.NextAttempt = s.now().Add(s.backoff(r.Attempts))
	c := Change{Enqueue: []Revocation{r}}
	result := "retry"
	if r.Attempts == s.cfg.MaxAttempts {
		result = "irrevocable"
		c.Events = []Event{{Type: EventIrrevocable, Actor: "latch", Subject: r.Agent, Outcome: "irrevocable",
			Details: map[string]string{"group": r.Group, "last_error": r.LastError}}}
	}
	s.log.Warn("group revocation failed", "group", r.Group, "agent", r.Agent, "attempt", r.Attempts, "next", r.NextAttempt, "err", err)
	if _, err := s.apply(ctx, c); err != nil {
		s.log.Error("record a failed group revocation", "group", r.Group, "err", err)
	}
	s.metrics.RevocationDone(result)
}
