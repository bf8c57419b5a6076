package backends

import (
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/latchbroker/latch/backends/vault"
	"github.com/latchbroker/latch/backends/vaulttoken"
	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/integration/vaultenv"
)

const ticketPolicy = `path "secret/data/tickets/42" {
  capabilities = ["read"]
}
`

func TestVaultToken_Mint(t *testing.T) {
	e := setup(t)
	ctx := t.Context()
	req := request("close-ticket", 5*time.Minute)
	req.MaxTTL = 15 * time.Minute // ignored: the template does not allow renewal
	req.Policy = ticketPolicy

	named, err := e.tokens.Refs(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	m, err := e.tokens.Mint(ctx, req)
	if err != nil {
		t.Fatalf("Mint: %v", err)
	}
	policy := vaulttoken.SharedPolicyName("", req.Policy)
	if m.Refs.Policy != policy || named.Policy != policy || m.Refs.TokenAccessor == "" || m.Refs.Group == "" || named.Group != m.Refs.Group {
		t.Fatalf("refs = %+v, named %+v", m.Refs, named)
	}
	if m.Renewable {
		t.Error("token renewable though the template does not allow it")
	}
	if lo, hi := before.Add(req.TTL-5*time.Second), time.Now().Add(req.TTL); m.ExpiresAt.Before(lo) || m.ExpiresAt.After(hi) {
		t.Errorf("ExpiresAt %s, want about now + %s", m.ExpiresAt, req.TTL)
	}
	if keys := m.Secret.Keys(); !slices.Equal(keys, []string{"token"}) {
		t.Fatalf("secret fields %v", keys)
	}

	// The agent can read exactly the rendered path.
	agent := e.clientWithToken(t, m.Secret.Reveal()["token"])
	got, err := agent.KVv2("secret").Get(ctx, "tickets/42")
	if err != nil {
		t.Fatalf("read the rendered path: %v", err)
	}
	if got.Data["body"] != "ticket 42" {
		t.Fatalf("read %v", got.Data)
	}
	for name, try := range map[string]func() error{
		"sibling path": func() error { _, err := agent.Logical().ReadWithContext(ctx, "secret/data/tickets/43"); return err },
		"write": func() error {
			_, err := agent.KVv2("secret").Put(ctx, "tickets/42", map[string]any{"x": 1})
			return err
		},
		"metadata":       func() error { _, err := agent.Logical().ReadWithContext(ctx, "secret/metadata/tickets/42"); return err },
		"lookup-self":    func() error { _, err := agent.Auth().Token().LookupSelfWithContext(ctx); return err },
		"cubbyhole":      func() error { _, err := agent.Logical().ReadWithContext(ctx, "cubbyhole/x"); return err },
		"its own policy": func() error { _, err := agent.Sys().GetPolicyWithContext(ctx, policy); return err },
		"create child token": func() error {
			_, err := agent.Auth().Token().CreateWithContext(ctx, &vaultapi.TokenCreateRequest{})
			return err
		},
	} {
		if err := try(); vaultenv.StatusOf(err) != http.StatusForbidden {
			t.Errorf("%s: got %v, want 403", name, err)
		}
	}

	// Root's view: only the lease's policy, orphan, TTL-bound, traceable.
	info, err := e.LookupAccessor(ctx, m.Refs.TokenAccessor)
	if err != nil {
		t.Fatal(err)
	}
	policies, _ := info.TokenPolicies()
	if !slices.Equal(policies, []string{policy}) {
		t.Errorf("token policies %v, want only %s", policies, policy)
	}
	meta, _ := info.TokenMetadata()
	if meta["latch_lease"] != req.LeaseID || meta["latch_agent"] != req.Agent || meta["latch_task"] != "close-ticket" {
		t.Errorf("token metadata %v", meta)
	}
	// A child of its group's parent, which is the orphan: latch logging
	// in again revokes neither.
	if info.Data["display_name"] != "token-latch-close-ticket" || info.Data["orphan"] != false {
		t.Errorf("display_name %v orphan %v", info.Data["display_name"], info.Data["orphan"])
	}
	parent, err := e.LookupAccessor(ctx, m.Refs.Group)
	if err != nil {
		t.Fatal(err)
	}
	if ps, _ := parent.TokenPolicies(); !slices.Equal(ps, []string{"latch_group"}) || parent.Data["orphan"] != true {
		t.Errorf("group parent policies %v orphan %v, want [latch_group] and an orphan", ps, parent.Data["orphan"])
	}
	if ttl, _ := info.TokenTTL(); ttl > req.TTL || ttl < req.TTL-10*time.Second {
		t.Errorf("token TTL %s, want %s", ttl, req.TTL)
	}
	if v := info.Data["explicit_max_ttl"]; v == nil || v.(interface{ String() string }).String() != "300" {
		t.Errorf("explicit_max_ttl %v, want 300 (the TTL, since not renewable)", v)
	}

	if alive, err := e.tokens.Lookup(ctx, m.Refs); err != nil || !alive {
		t.Fatalf("Lookup before revoke = %v, %v", alive, err)
	}
	if err := e.tokens.Revoke(ctx, m.Refs); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	if _, err := agent.KVv2("secret").Get(ctx, "tickets/42"); vaultenv.StatusOf(err) != http.StatusForbidden {
		t.Errorf("read after revoke: %v, want 403", err)
	}
	if _, err := e.LookupAccessor(ctx, m.Refs.TokenAccessor); err == nil || !strings.Contains(err.Error(), "invalid accessor") {
		t.Errorf("lookup of revoked token: %v, want invalid accessor", err)
	}
	// The shared policy stays for the Service to collect once no lease
	// names it.
	if ok, err := e.PolicyExists(ctx, policy); err != nil || !ok {
		t.Errorf("policy %s after revoke: exists %v, %v; want it kept for collection", policy, ok, err)
	}
	if listed, err := e.tokens.Policies(ctx); err != nil || !slices.Contains(listed, policy) {
		t.Errorf("Policies = %v, %v; want %s listed", listed, err, policy)
	}
	if err := e.tokens.DeletePolicy(ctx, policy); err != nil {
		t.Fatal(err)
	}
	if ok, err := e.PolicyExists(ctx, policy); err != nil || ok {
		t.Errorf("policy %s after its collection: exists %v, %v", policy, ok, err)
	}
	if alive, err := e.tokens.Lookup(ctx, m.Refs); err != nil || alive {
		t.Fatalf("Lookup after revoke = %v, %v", alive, err)
	}
	if err := e.tokens.Revoke(ctx, m.Refs); err != nil {
		t.Fatalf("second Revoke: %v, want idempotent", err)
	}
}

// TestVaultToken_RevokeWhenTokenGone: a token revoked behind latch's back
// is gone for Lookup (the shared policy says nothing of one lease), and
// Revoke is still a success.
func TestVaultToken_RevokeWhenTokenGone(t *testing.T) {
	e := setup(t)
	ctx := t.Context()
	req := request("close-ticket", time.Minute)
	req.Policy = ticketPolicy
	m, err := e.tokens.Mint(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	// Someone revoked the token behind latch's back.
	if _, err := e.Root.Logical().WriteWithContext(ctx, "auth/token/revoke-accessor", map[string]any{"accessor": m.Refs.TokenAccessor}); err != nil {
		t.Fatal(err)
	}
	if alive, err := e.tokens.Lookup(ctx, m.Refs); err != nil || alive {
		t.Fatalf("Lookup of a token revoked behind latch's back = %v, %v; want gone", alive, err)
	}
	if err := e.tokens.Revoke(ctx, m.Refs); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
}

func TestVaultToken_Renew(t *testing.T) {
	e := setup(t)
	ctx := t.Context()
	req := request("close-ticket", time.Minute)
	req.MaxTTL, req.Renewable = 3*time.Minute, true
	req.Policy = ticketPolicy
	m, err := e.tokens.Mint(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	defer e.tokens.Revoke(ctx, m.Refs)
	if !m.Renewable {
		t.Fatal("Minted.Renewable false for a renewable template")
	}
	exp, err := e.tokens.Renew(ctx, m.Refs, 2*time.Minute)
	if err != nil {
		t.Fatalf("Renew: %v", err)
	}
	if d := time.Until(exp); d < 110*time.Second || d > 2*time.Minute {
		t.Errorf("renewed until now + %s, want 2m", d)
	}
	// Past the max TTL, Vault caps at explicit_max_ttl.
	exp, err = e.tokens.Renew(ctx, m.Refs, time.Hour)
	if err != nil {
		t.Fatalf("Renew: %v", err)
	}
	if d := time.Until(exp); d > 3*time.Minute {
		t.Errorf("renewed until now + %s, past the max TTL of 3m", d)
	}

	// A non-renewable lease cannot be renewed.
	req2 := request("close-ticket", time.Minute)
	req2.Policy = ticketPolicy
	m2, err := e.tokens.Mint(ctx, req2)
	if err != nil {
		t.Fatal(err)
	}
	defer e.tokens.Revoke(ctx, m2.Refs)
	if _, err := e.tokens.Renew(ctx, m2.Refs, time.Minute); !errors.Is(err, broker.ErrNotRenewable) {
		t.Fatalf("Renew of a non-renewable token = %v, want ErrNotRenewable", err)
	}
}

func TestVaultToken_BadPolicy(t *testing.T) {
	e := setup(t)
	ctx := t.Context()
	req := request("close-ticket", time.Minute)
	req.Policy = `path "secret/data/x" { capabilities = [`
	named, err := e.tokens.Refs(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.tokens.Mint(ctx, req)
	if err == nil || errors.Is(err, broker.ErrBackendUnavailable) || !strings.Contains(err.Error(), "write policy") {
		t.Fatalf("Mint with a broken policy = %v, want a permanent policy error", err)
	}
	if ok, err := e.PolicyExists(ctx, named.Policy); err != nil || ok {
		t.Fatalf("policy %s of a refused mint: exists %v, %v; nothing should exist", named.Policy, ok, err)
	}
}

// TestVaultToken_Groups: an agent's tokens of one task and template
// version are children of a few parents (vault.GroupShards). Revoking one
// token leaves its siblings; revoking the group revokes them all, in one
// call, and no other group's token.
func TestVaultToken_Groups(t *testing.T) {
	const agentA, agentB = "spiffe://example.org/agent/a", "spiffe://example.org/agent/b"
	e := setup(t)
	ctx := t.Context()
	mint := func(agent, version string) broker.Minted {
		t.Helper()
		req := request("close-ticket", 5*time.Minute)
		req.Agent, req.TemplateVersion, req.Policy = agent, version, ticketPolicy
		m, err := e.tokens.Mint(ctx, req)
		if err != nil {
			t.Fatalf("Mint: %v", err)
		}
		return m
	}
	alive := func(m broker.Minted) bool {
		t.Helper()
		ok, err := e.tokens.Lookup(ctx, m.Refs)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	byGroup := map[string][]broker.Minted{}
	for range 3 * vault.GroupShards {
		m := mint(agentA, "sha256:1")
		byGroup[m.Refs.Group] = append(byGroup[m.Refs.Group], m)
	}
	otherVersion, otherAgent := mint(agentA, "sha256:2"), mint(agentB, "sha256:1")
	if len(byGroup) > vault.GroupShards || byGroup[otherVersion.Refs.Group] != nil || byGroup[otherAgent.Refs.Group] != nil {
		t.Fatalf("%d groups for one agent × task × version (want at most %d), other version in one of them: %v, other agent: %v",
			len(byGroup), vault.GroupShards, byGroup[otherVersion.Refs.Group] != nil, byGroup[otherAgent.Refs.Group] != nil)
	}
	var group string
	for g, ms := range byGroup {
		if len(ms) >= 3 {
			group = g
		}
	}
	if group == "" {
		t.Fatalf("no group holds 3 of %d tokens in %d groups", 3*vault.GroupShards, len(byGroup))
	}
	ms := byGroup[group]
	if err := e.tokens.Revoke(ctx, ms[0].Refs); err != nil {
		t.Fatal(err)
	}
	if alive(ms[0]) || !alive(ms[1]) || !alive(ms[2]) {
		t.Fatalf("revoking one token: alive %v %v %v, want only the revoked one gone", alive(ms[0]), alive(ms[1]), alive(ms[2]))
	}
	if err := e.tokens.RevokeGroup(ctx, group, nil); err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if alive(m) {
			t.Fatalf("token %s outlived its group's revocation", m.Refs.TokenAccessor)
		}
	}
	for g, others := range byGroup {
		if g != group && !alive(others[0]) {
			t.Fatalf("a token of group %s died with group %s", g, group)
		}
	}
	if !alive(otherVersion) || !alive(otherAgent) {
		t.Fatal("another version's or agent's token died with the group")
	}
	// The revoked group takes no new token.
	for range 2 * vault.GroupShards {
		if next := mint(agentA, "sha256:1"); next.Refs.Group == group || !alive(next) {
			t.Fatalf("a mint after the group's revocation used group %s (alive %v)", next.Refs.Group, alive(next))
		}
	}
	if err := e.tokens.RevokeGroup(ctx, group, nil); err != nil {
		t.Fatalf("revoking a revoked group again: %v", err)
	}
}
