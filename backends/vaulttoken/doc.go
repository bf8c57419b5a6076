// Package vaulttoken is the vault-token backend: for each lease it writes
// the template's rendered ACL policy as the Vault policy latch-<lease id>
// and creates a token with only that policy — so the agent can touch
// exactly the paths the template rendered for this request, for the lease
// TTL.
//
// Mint:
//
//  1. sys/policies/acl/latch-<lease id> = the rendered policy;
//  2. auth/token/create/<token_role>: an orphan service token with policies
//     [latch-<lease id>] and no default policy, TTL = lease TTL,
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
// The token is an orphan so that latch's own token expiring, or latch
// logging in again, does not revoke the agents' tokens. The token role
// (default latch-token) is what lets latch create tokens with policies it
// does not hold itself: allowed_policies_glob "latch-*", orphan=true.
//
// Renew extends the token by accessor, never past the lease's max TTL
// (Vault itself enforces only the token role's token_explicit_max_ttl on
// renewal; see vault.Client.RenewAccessor).
//
// Revoke revokes the token by accessor, then deletes the policy — also
// when the token is already gone, and also when only the policy name is
// known. Deleting the policy alone already leaves any token carrying it
// with no capabilities at all (it has no default policy), which is what
// makes the policy's deterministic name enough for crash safety: see
// Prepare and backends/doc.go.
//
// Config (backends: block):
//
//	tokens: { type: vault-token }                         # token_role: latch-token
//	tokens: { type: vault-token, token_role: latch-agents }
package vaulttoken
