package vaulttoken

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/latchbroker/latch/backends/vault"
	"github.com/latchbroker/latch/broker"
)

// DefaultGroupRole is the token role group parents are created through.
const DefaultGroupRole = "latch-group"

// GroupFor is how long a group's parent takes new tokens. Its TTL is that
// plus the longest a token of the group may live (the lease's max TTL),
// so every child is revoked or expired by the time its parent expires,
// and no parent outlives latch's record of its leases by more than the
// group's own TTL.
const GroupFor = 10 * time.Minute

// groupSlack is the margin a parent's TTL keeps beyond its last child's
// max TTL, for a mint that takes its group just before the group stops
// taking tokens and creates the child a little later.
const groupSlack = time.Minute

// A group is one agent's tokens of one task and template version, created
// as children of one parent token: revoking the parent (one Vault call)
// revokes them all.
type group struct {
	accessor string
	token    broker.Secret
	// takesUntil is when the group stops taking new tokens; expires is
	// when the parent, and with it every child, expires.
	takesUntil, expires time.Time
}

// groups are the parents this process holds the tokens of: open by key
// (agent, task, template version) for new tokens, and by accessor for
// the mints that were given one in their refs.
type groups struct {
	mu       sync.Mutex
	open     map[string]*group
	byAcc    map[string]*group
	creating sync.Mutex // one parent created at a time: they are rare
}

func groupKey(req broker.MintRequest) string {
	return req.Agent + "\x00" + req.Task + "\x00" + req.TemplateVersion
}

// takes reports whether g may take a token of req now.
func (g *group) takes(now time.Time, req broker.MintRequest) bool {
	return now.Before(g.takesUntil) && !now.Add(req.EffectiveMaxTTL()+groupSlack).After(g.expires)
}

func (gs *groups) get(key string, now time.Time, req broker.MintRequest) *group {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	if g := gs.open[key]; g != nil && g.takes(now, req) {
		return g
	}
	return nil
}

// groupFor returns the open group of req, creating its parent when there
// is none or it no longer takes tokens.
func (b *Backend) groupFor(ctx context.Context, req broker.MintRequest) (*group, error) {
	key := groupKey(req)
	if g := b.groups.get(key, b.c.Now(), req); g != nil {
		return g, nil
	}
	b.groups.creating.Lock()
	defer b.groups.creating.Unlock()
	if g := b.groups.get(key, b.c.Now(), req); g != nil {
		return g, nil
	}
	g, err := b.createParent(ctx, req)
	if err != nil {
		return nil, err
	}
	b.groups.mu.Lock()
	defer b.groups.mu.Unlock()
	for acc, old := range b.groups.byAcc {
		if !b.c.Now().Before(old.expires) {
			delete(b.groups.byAcc, acc)
		}
	}
	b.groups.open[key] = g
	b.groups.byAcc[g.accessor] = g
	return g, nil
}

func (b *Backend) createParent(ctx context.Context, req broker.MintRequest) (*group, error) {
	maxTTL := req.EffectiveMaxTTL()
	now := b.c.Now()
	tok, err := b.c.CreateToken(ctx, "group.create", vault.TokenRequest{
		Role:           b.cfg.GroupRole,
		TTL:            GroupFor + maxTTL + groupSlack,
		ExplicitMaxTTL: GroupFor + maxTTL + groupSlack,
		DisplayName:    "latch-group-" + req.Task,
		Meta: map[string]string{
			"latch_agent":    req.Agent,
			"latch_task":     req.Task,
			"latch_template": req.TemplateVersion,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("vaulttoken: create the group parent of %s for %s: %w", req.Task, req.Agent, err)
	}
	g := &group{accessor: tok.Accessor, token: tok.Secret, expires: now.Add(tok.TTL)}
	g.takesUntil = now.Add(min(GroupFor, tok.TTL-maxTTL-groupSlack))
	if !g.takes(now, req) {
		vault.Cleanup(ctx, nil, func(ctx context.Context) error { return b.c.RevokeAccessor(ctx, tok.Accessor) })
		return nil, fmt.Errorf("vaulttoken: token role %s gave a group parent a TTL of %s, shorter than task %s's max TTL %s: "+
			"raise the role's token_explicit_max_ttl to at least %s more than the longest max_ttl of your templates",
			b.cfg.GroupRole, tok.TTL, req.Task, maxTTL, GroupFor+groupSlack)
	}
	return g, nil
}

// parent returns the group a mint's refs name, while this process holds
// its token and it has not expired.
func (b *Backend) parent(accessor string) (*group, bool) {
	b.groups.mu.Lock()
	defer b.groups.mu.Unlock()
	g, ok := b.groups.byAcc[accessor]
	return g, ok && b.c.Now().Before(g.expires)
}

// ForgetGroup stops using a group for new tokens (broker.Grouper).
func (b *Backend) ForgetGroup(accessor string) {
	b.groups.mu.Lock()
	defer b.groups.mu.Unlock()
	delete(b.groups.byAcc, accessor)
	for key, g := range b.groups.open {
		if g.accessor == accessor {
			delete(b.groups.open, key)
		}
	}
}

// RevokeGroup revokes a group's parent token, and with it every token of
// the group (broker.Grouper). A parent that is gone counts as revoked.
func (b *Backend) RevokeGroup(ctx context.Context, accessor string) error {
	b.ForgetGroup(accessor)
	if err := b.c.RevokeAccessor(ctx, accessor); err != nil {
		return fmt.Errorf("vaulttoken: revoke group parent %s: %w", accessor, err)
	}
	return nil
}
