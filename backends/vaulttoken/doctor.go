package vaulttoken

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/latchbroker/latch/backends/vault"
)

var _ vault.Checker = (*Backend)(nil)

// Check implements vault.Checker: latch's token may list, write and
// delete its shared policies and create group parents; a group parent,
// created as Mint creates them, is an orphan that lives long enough and
// creates an agent's token through TokenRole: its child, with only the
// policy latch names.
func (b *Backend) Check(ctx context.Context, name string, maxTTL time.Duration, _ []string) ([]vault.Problem, error) {
	forWhat := fmt.Sprintf("backend %q (vault-token)", name)
	probe := b.prefix + "doctor"
	probs, err := b.c.CheckCapabilities(ctx, forWhat, map[string][]string{
		"sys/policies/acl":                     {"list"},
		"sys/policies/acl/" + probe:            {"create", "update", "read", "delete"},
		"auth/token/create/" + b.cfg.GroupRole: {"update"},
	})
	if err != nil || len(probs) > 0 {
		return probs, err
	}
	ttl := b.groups.ParentTTL(maxTTL)
	return b.c.Probe(ctx, forWhat, vault.TokenRequest{Role: b.cfg.GroupRole, TTL: ttl, ExplicitMaxTTL: ttl},
		func(parent vault.Token) ([]vault.Problem, error) {
			probs := vault.ProbeLifetime(forWhat, b.cfg.GroupRole, parent, ttl)
			orphan, err := b.c.ProbeOrphan(ctx, forWhat, b.cfg.GroupRole, parent.Accessor, true)
			if err != nil {
				return nil, err
			}
			caps, err := b.c.ProbeCapabilities(ctx, forWhat, b.cfg.GroupRole, parent, map[string][]string{"auth/token/create/" + b.cfg.TokenRole: {"update"}})
			if err != nil || len(caps) > 0 {
				return append(append(probs, orphan...), caps...), err
			}
			child, err := b.checkAgentToken(ctx, forWhat, parent, probe, maxTTL)
			return append(append(probs, orphan...), child...), err
		})
}

// checkAgentToken creates an agent's token under the probe parent, as
// Mint does (revoked with its parent).
func (b *Backend) checkAgentToken(ctx context.Context, forWhat string, parent vault.Token, policy string, maxTTL time.Duration) ([]vault.Problem, error) {
	role := b.cfg.TokenRole
	tok, err := b.c.CreateToken(ctx, "doctor.probe", vault.TokenRequest{Role: role, Policies: []string{policy},
		TTL: maxTTL, ExplicitMaxTTL: maxTTL, DisplayName: "latch-doctor", Parent: parent.Secret})
	if s := vault.StatusOf(err); s == 400 || s == 403 || s == 404 {
		return []vault.Problem{{For: forWhat, What: fmt.Sprintf("a group parent cannot create an agent's token through token role %s: %v", role, err),
			Fix: "create the role with allowed_policies_glob='latch-*' as " + vault.PolicySection + " shows"}}, nil
	}
	if err != nil {
		return nil, err
	}
	// Revoked with its parent, unless the role made it an orphan.
	defer vault.Cleanup(ctx, nil, func(ctx context.Context) error { return b.c.RevokeAccessor(ctx, tok.Accessor) })
	probs := vault.ProbeLifetime(forWhat, role, tok, maxTTL)
	if !slices.Equal(tok.Policies, []string{policy}) {
		probs = append(probs, vault.Problem{For: forWhat, What: fmt.Sprintf("token role %s gives an agent's token the policies %q, latch needs only its own", role, tok.Policies),
			Fix: "write the role with token_no_default_policy=true and no token_policies (" + vault.PolicySection + ")"})
	}
	orphan, err := b.c.ProbeOrphan(ctx, forWhat, role, tok.Accessor, false)
	return append(probs, orphan...), err
}
