// Package vaultlease is the vault-lease backend: it reads any Vault path
// that returns a lease — database/creds/<role>, aws/creds/<role>,
// rabbitmq/creds/<role>, consul/creds/<role>, nomad/creds/<role> ... —
// with the path rendered from the task's parameters, and hands the lease's
// data to the agent.
//
// Every read is one Vault call, made with the mint token of the lease's
// group (vault.Groups): one orphan token per agent, task, template
// version and max TTL, created through token_role with only the
// latch_mint policy, taking new reads for at most vault.MintGroupFor (a
// minute; a quarter of the max TTL when shorter), with a TTL of that, the
// lease's max TTL and the same again as slack. Its accessor is the
// intent's ref (broker.Namer), known before the read. Vault revokes the
// leases a token created when the token is revoked or expires, which
// gives three guarantees:
//
//   - latch revokes at its own TTL even where the engine role's TTL is
//     longer: the Service revokes each lease at its TTL; and if latch is
//     not running, Vault itself revokes the secret when the group's mint
//     token expires, at most the max TTL and two minutes (half of it for a
//     max TTL under four minutes) after the read;
//   - revoking by agent, task, template or all revokes each group's mint
//     token once (broker.Grouper), and with it every lease of the group;
//   - if latch dies between the read and the commit of the lease, the
//     secret is under the group the intent names: reconciliation retires
//     the group and revokes its mint token once no live lease is in it.
//
// Revoke revokes one Vault lease synchronously (sys/leases/revoke/<id>, so
// the database user is gone when Revoke returns); refs with only a group
// are a crashed read's (broker.ErrExpiresOnItsOwn: the group's collection
// revokes it). Renew renews the lease; the Service asks for no more than
// the lease's max TTL, and the group's mint token outlives that. Leases of
// older latches with a per-lease mint token (Refs.MintAccessor) are
// revoked and renewed with it, as then. A path that returns no lease (a KV
// secret, say) is refused: latch could never take it back.
//
// The rendered path must stay under the static prefix of the configured
// path template (the text before its first {{), have exactly as many
// segments as the template (a value renders inside its segment: a role of
// eu/extra/segments would read another endpoint), and may not contain
// empty, "." or ".." segments, whitespace or invisible characters; the
// mint token's policy decides what it may actually read. RenderCheck is
// that rule: templates.Evaluate runs it on every request (backends/catalog
// wires it in), so `latch explain` and approvers see a refusal before
// anyone approves, and Mint runs it again. The path template may use
// {{ ... }} actions only, no {{ if }} or {{ range }}, so that its segment
// count is fixed; compute a var in the task template instead.
//
// Config (backends: block):
//
//	app-db: { type: vault-lease, path: "database/creds/{{ .vars.role }}" }   # token_role: latch-mint
package vaultlease
