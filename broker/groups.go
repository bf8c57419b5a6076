package broker

import (
	"context"
	"sync"
	"time"
)

// Groups (Grouper): a bulk revocation revokes each group's parent once.
// A group is retired in the store — no lease commits in it any more —
// when a bulk revocation queues its leases, and when reconciliation finds
// an intent of it, whose credential may exist unrecorded under the
// parent. collectGroups revokes the parent of every retired group that no
// live lease and no queued revocation names: what a crash left in it dies
// then.

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

// groupsOf returns the groups of leases, each forgotten by its backend
// (no new credential joins it), when byGroup.
func (s *core) groupsOf(leases []*Lease, byGroup bool) []RetiredGroup {
	if !byGroup {
		return nil
	}
	seen := map[string]bool{}
	var out []RetiredGroup
	for _, l := range leases {
		if g := s.grouper(l); g != nil && !seen[l.Refs.Group] {
			seen[l.Refs.Group] = true
			g.ForgetGroup(l.Refs.Group)
			out = append(out, RetiredGroup{Group: l.Refs.Group, Backend: l.Backend})
		}
	}
	return out
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
// live names and no queued revocation will revoke, and drops the marks of
// collected groups older than RetiredFor.
func (s *core) collectGroups(ctx context.Context) error {
	marks, err := s.store.RetiredGroups(ctx)
	if err != nil || len(marks) == 0 {
		return err
	}
	due, err := s.store.DueRevocations(ctx, s.now().Add(100*365*24*time.Hour), 1<<30)
	if err != nil {
		return err
	}
	queued := map[string]bool{}
	for _, r := range due {
		queued[r.Group] = true
	}
	use, err := s.store.PolicyUse(ctx)
	if err != nil {
		return err
	}
	var drop []string
	for _, m := range marks {
		if queued[m.Group] || use.LiveGroups[m.Group] {
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
