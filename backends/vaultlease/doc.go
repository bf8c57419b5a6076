// Package vaultlease is the vault-lease backend: it reads any Vault path
// that returns a lease — database/creds/<role>, aws/creds/<role>,
// rabbitmq/creds/<role>, consul/creds/<role>, nomad/creds/<role> ... —
// with the path rendered from the task's parameters, and hands the lease's
// data to the agent.
//
// Every read happens under a per-lease mint token (vault.PrepareMintToken):
// an orphan token with TTL = lease TTL whose accessor is known before the
// read. Vault revokes the leases a token created when the token is revoked
// or expires, which gives two guarantees:
//
//   - latch revokes at its own TTL even where the engine role's TTL is
//     longer: if nothing else happens first, Vault itself revokes the
//     secret when the mint token expires at the lease TTL;
//   - if latch dies between the read and the commit of the lease, the
//     intent's mint accessor is enough to revoke the secret.
//
// Revoke revokes the Vault lease synchronously (sys/leases/revoke/<id>, so
// the database user is gone when Revoke returns), then the mint token.
// Renew renews both, up to the lease's max TTL. A path that returns no
// lease (a KV secret, say) is refused: latch could never take it back.
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
