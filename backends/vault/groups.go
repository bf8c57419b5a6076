package vault

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/latchbroker/latch/broker"
)

// GroupFor is the longest a group's parent takes new credentials (a
// quarter of the lease's max TTL when that is shorter; backends may use
// less). Its TTL is that plus the longest a credential of the group may
// live (the lease's max TTL) plus the slack, so that no credential is cut
// short by its parent expiring, and no parent outlives its last lease by
// more than the two.
const GroupFor = 10 * time.Minute

// GroupSlack is the longest margin a parent's TTL keeps beyond its last
// credential's max TTL (a quarter of that max TTL when shorter), for a
// mint that takes its group just before the group stops taking
// credentials and calls Vault a little later.
const GroupSlack = time.Minute

// Group is one agent's credentials of one task and template version,
// created with one parent token: as its children (vault-token) or as the
// owner of their Vault leases (vault-lease, vault-pki). Revoking the
// parent, one Vault call, revokes them all.
type Group struct {
	// Accessor is the parent's accessor (broker.Refs.Group).
	Accessor string
	// Token is the parent's value, in this process's memory only.
	Token broker.Secret
	// takesUntil is when the group stops taking new credentials; expires
	// is when the parent, and with it everything under it, expires.
	takesUntil, expires time.Time
	slack               time.Duration
}

// takes reports whether g may take a credential of req now.
func (g *Group) takes(now time.Time, req broker.MintRequest) bool {
	return now.Before(g.takesUntil) && !now.Add(req.EffectiveMaxTTL()+g.slack).After(g.expires)
}

// Groups are the group parents one backend creates, through one token
// role: open by key (agent, task, template version, max TTL) for new credentials,
// and by accessor for the mints whose refs name one.
type Groups struct {
	c        *Client
	role     string
	display  string
	maxFor   time.Duration
	mu       sync.Mutex
	open     map[string]*Group
	byAcc    map[string]*Group
	creating sync.Mutex // one parent created at a time: they are rare
}

// NewGroups returns the groups whose parents are created through role,
// with display names display-<task>, each taking credentials for at most
// maxFor (at most GroupFor).
func NewGroups(c *Client, role, display string, maxFor time.Duration) *Groups {
	return &Groups{c: c, role: role, display: display, maxFor: min(maxFor, GroupFor),
		open: map[string]*Group{}, byAcc: map[string]*Group{}}
}

// GroupShards is how many groups share one agent, task and template
// version, each lease in one of them by its ID: a bulk revocation revokes
// their parents concurrently, and Vault revokes each parent's tree on one
// thread, so one group alone would leave Vault's other cores idle.
const GroupShards = 4

// groupKey: with the max TTL too, so that a group's parent lives no
// longer than its own credentials need (a template version has one TTL,
// but requests may ask for less), and the lease's shard.
func groupKey(req broker.MintRequest) string {
	shard := 0
	if id := req.LeaseID; id != "" {
		shard = int(id[len(id)-1]) % GroupShards
	}
	return req.Agent + "\x00" + req.Task + "\x00" + req.TemplateVersion + "\x00" +
		strconv.FormatInt(int64(req.EffectiveMaxTTL()), 10) + "\x00" + strconv.Itoa(shard)
}

func (gs *Groups) takes(key string, req broker.MintRequest) *Group {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	if g := gs.open[key]; g != nil && g.takes(gs.c.Now(), req) {
		return g
	}
	return nil
}

// For returns the open group of req, creating its parent when there is
// none or it no longer takes credentials.
func (gs *Groups) For(ctx context.Context, req broker.MintRequest) (*Group, error) {
	key := groupKey(req)
	if g := gs.takes(key, req); g != nil {
		return g, nil
	}
	gs.creating.Lock()
	defer gs.creating.Unlock()
	if g := gs.takes(key, req); g != nil {
		return g, nil
	}
	g, err := gs.create(ctx, req)
	if err != nil {
		return nil, err
	}
	gs.mu.Lock()
	defer gs.mu.Unlock()
	for acc, old := range gs.byAcc {
		if !gs.c.Now().Before(old.expires) {
			delete(gs.byAcc, acc)
		}
	}
	gs.open[key] = g
	gs.byAcc[g.Accessor] = g
	return g, nil
}

// ParentTTL is the TTL of a parent whose credentials live up to maxTTL:
// how long it takes credentials, their max TTL, and the slack.
func (gs *Groups) ParentTTL(maxTTL time.Duration) time.Duration {
	return min(gs.maxFor, maxTTL/4) + maxTTL + min(GroupSlack, maxTTL/4)
}

// Role is the token role the parents are created through.
func (gs *Groups) Role() string { return gs.role }

func (gs *Groups) create(ctx context.Context, req broker.MintRequest) (*Group, error) {
	maxTTL := req.EffectiveMaxTTL()
	takesFor, slack := min(gs.maxFor, maxTTL/4), min(GroupSlack, maxTTL/4)
	now := gs.c.Now()
	tok, err := gs.c.CreateToken(ctx, "group.create", TokenRequest{
		Role:           gs.role,
		TTL:            gs.ParentTTL(maxTTL),
		ExplicitMaxTTL: gs.ParentTTL(maxTTL),
		DisplayName:    gs.display + "-" + req.Task,
		Meta: map[string]string{
			"latch_agent":    req.Agent,
			"latch_task":     req.Task,
			"latch_template": req.TemplateVersion,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("create the group parent of %s for %s: %w", req.Task, req.Agent, err)
	}
	g := &Group{Accessor: tok.Accessor, Token: tok.Secret, expires: now.Add(tok.TTL), slack: slack}
	g.takesUntil = now.Add(min(takesFor, tok.TTL-maxTTL-slack))
	if !g.takes(now, req) {
		Cleanup(ctx, nil, func(ctx context.Context) error { return gs.c.RevokeAccessor(ctx, tok.Accessor) })
		return nil, fmt.Errorf("token role %s gave a group parent a TTL of %s, shorter than task %s's max TTL %s: "+
			"raise the role's token_explicit_max_ttl to at least %s more than the longest max_ttl of your templates",
			gs.role, tok.TTL, req.Task, maxTTL, gs.maxFor+GroupSlack)
	}
	return g, nil
}

// Parent returns the group a mint's refs name, while this process holds
// its token and it has not expired.
func (gs *Groups) Parent(accessor string) (*Group, bool) {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	g, ok := gs.byAcc[accessor]
	return g, ok && gs.c.Now().Before(g.expires)
}

// Held returns the group req's refs name (Prepared.Refs.Group), while this
// process holds its parent's token. Otherwise the group was revoked
// (forgotten first) or its parent expired since the intent: the error
// wraps broker.ErrGroupGone, and the Service tries the issue again in a
// new group.
func (gs *Groups) Held(req broker.MintRequest) (*Group, error) {
	g, ok := gs.Parent(req.Prepared.Refs.Group)
	if !ok {
		return nil, fmt.Errorf("%w: lease %s: group %s", broker.ErrGroupGone, req.LeaseID, req.Prepared.Refs.Group)
	}
	return g, nil
}

// Expires is when a group's parent expires: from memory, or else from
// Vault (a parent of an earlier run of latch).
func (gs *Groups) Expires(ctx context.Context, accessor string) (time.Time, error) {
	if g, ok := gs.Parent(accessor); ok {
		return g.expires, nil
	}
	data, err := gs.c.lookupAccessor(ctx, accessor)
	if err != nil {
		return time.Time{}, err
	}
	return gs.c.Now().Add(time.Duration(number(data["ttl"])) * time.Second), nil
}

// Forget stops using a group for new credentials (broker.Grouper's
// ForgetGroup).
func (gs *Groups) Forget(accessor string) {
	gs.mu.Lock()
	defer gs.mu.Unlock()
	delete(gs.byAcc, accessor)
	for key, g := range gs.open {
		if g.Accessor == accessor {
			delete(gs.open, key)
		}
	}
}

// Revoke revokes a group's parent, and with it everything under it
// (broker.Grouper's RevokeGroup). A parent that is gone counts as revoked.
func (gs *Groups) Revoke(ctx context.Context, accessor string) error {
	gs.Forget(accessor)
	if err := gs.c.RevokeAccessor(ctx, accessor); err != nil {
		return fmt.Errorf("revoke group parent %s: %w", accessor, err)
	}
	return nil
}
