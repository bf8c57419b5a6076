// Package vaulttoken is the vault-token backend: for each lease it creates
// a token with only the template's rendered ACL policy — so the agent can
// touch exactly the paths the template rendered for this request, for the
// lease TTL.
//
// Policies are shared by content: the rendered text is written once, as
// latch-p-<128 bits of its SHA-256>, and every lease that renders the same
// text (the same task and parameters) uses it. Mint writes it only when
// this process has not written it within WrittenFor (a minute: the bound
// on tokens minted powerless should anyone else delete it); the Service
// deletes it
// (broker.PolicyCollector) once no intent or live lease names it, marking
// the deletion in the store so that no issue races it. A request that
// renders a new policy each time (ticket=42, 43, …) writes one each time,
// as before.
//
// Tokens are grouped: every token of one agent, task and template version
// is created by one parent token, the group's (Refs.Group is its
// accessor), so that revoking by agent, task, template or all revokes each
// group's parent once — Vault revokes a token's children with it — instead
// of each token (broker.Grouper). A parent is an orphan created through
// group_role (default latch-group) with only the latch_group policy,
// which may create tokens through token_role and nothing else; its value
// lives in this process's memory only. It takes new tokens for
// vault.GroupFor (10 minutes), then a new one is created; its TTL is
// GroupFor plus the lease's max TTL plus a minute, so no child is cut
// short by its parent expiring (see vault.Groups). After a restart the old parents take no new tokens; they
// expire on their own, or are revoked by a bulk revocation through the
// accessor their leases record.
//
// Mint:
//
//  0. (Refs, before the intent) the group's parent, when it has none that
//     takes tokens: auth/token/create/<group_role>;
//  1. sys/policies/acl/latch-p-<hash> = the rendered policy, unless written;
//  2. auth/token/create/<token_role>, called with the parent's token: a
//     child service token with policies
//     [latch-p-<hash>] and no default policy, TTL = lease TTL,
//     explicit_max_ttl = the lease's max TTL (or its TTL when the template
//     does not allow renewal), renewable only if the template allows,
//     metadata latch_lease, latch_agent, latch_task, and display name
//     latch-<task>. Vault's answer is checked: a token carrying any other
//     policy is revoked and the mint fails.
//
// A request's rendered policy is checked (RenderCheck: it is not empty) by
// templates.Evaluate, through backends/catalog, and again by Mint. What it
// may say is kept in check upstream: parameter values hold only
// allowlisted characters, so no quote, brace or wildcard reaches the HCL.
//
// The parent is an orphan so that latch's own token expiring, or latch
// logging in again, does not revoke the agents' tokens. The token role
// (default latch-token) is what lets a parent create tokens with policies
// it does not hold itself: allowed_policies_glob "latch-*", orphan=false.
//
// Renew extends the token by accessor, never past the lease's max TTL
// (Vault itself enforces only the token role's token_explicit_max_ttl on
// renewal; see vault.Client.RenewAccessor).
//
// Revoke revokes one token by accessor; RevokeGroup a group's parent.
// Crash safety, restated: a policy is shared, so deleting it no longer
// disarms the token of a mint that crashed between creating the token and
// recording it. Such a token was never delivered to anyone; its lease's
// refs name only the policy and the group, and its revocation ends as
// "expires" (broker.ErrExpiresOnItsOwn, counted in
// latch_revocations_total{result="expires"}): it expires at its TTL, at
// most the template's ttl, or earlier with its group, when a revocation by
// agent, task, template or all takes the group. Per-lease policies
// (latch-<lease id>) of older latches are still deleted with their lease.
//
// Config (backends: block):
//
//	tokens: { type: vault-token }                         # token_role: latch-token, group_role: latch-group
//	tokens: { type: vault-token, token_role: latch-agents, group_role: latch-agent-groups }
package vaulttoken
