// Package backends groups the Vault secret backends that implement
// broker.Backend: backends/vaulttoken, backends/vaultlease and
// backends/vaultpki, over the shared Vault client in backends/vault.
// Vault admins plug them in through the backends: section of the config;
// backends/catalog lists them, hands each its own config block and builds
// them, for cmd/latch and the integration tests alike. Built by hand:
//
//	c, _ := vault.New(vaultCfg)                  // one client, latch's own login
//	tokens, _ := vaulttoken.New(c, vaulttoken.Config{})
//	leases, _ := vaultlease.New(c, vaultlease.Config{Path: "database/creds/{{ .vars.role }}"})
//	certs, _ := vaultpki.New(c, vaultpki.Config{Mount: "pki", Role: "agents"})
//
// # Crash safety
//
// latch may die (kill -9, power loss) after a backend created something in
// Vault and before the lease recording it is committed. The broker closes
// that gap with an intent record written before the backend is called.
// vault-lease and vault-pki implement broker.Preparer, vault-token
// broker.Namer, so that the intent can name, in advance, a handle through
// which what Mint creates can be revoked or bounded;
// at restart, reconciliation calls Revoke with the refs of every intent that
// has no committed lease. Whatever happens, the worst case is bounded by
// the lease TTL, because everything is created with that TTL in Vault.
//
// vault-token — a shared policy, named by its content, and the group's
// parent token (Refs: the parent is created before the intent when the
// group has none) are the intent's refs. The policy cannot disarm one
// lease's token, since other leases may carry it: a token whose accessor
// was never recorded was never delivered, and it expires at the lease TTL
// (explicit_max_ttl; nothing renews it), or earlier with its group's
// parent when a revocation by agent, task, template or all takes the
// group. Its revocation ends as "expires" (broker.ErrExpiresOnItsOwn,
// latch_revocations_total{result="expires"}); when no other live lease
// renders the same policy, the Service's policy collection deletes it and
// the token is inert at once (it has no default policy).
//
// vault-lease — the group's mint token. Refs names the group (creating
// its mint token, an orphan carrying only latch_mint, when the group has
// none that takes reads), and the intent records its accessor. Mint reads
// the engine path with that token, one Vault call, so the Vault lease
// belongs to it. Vault revokes every lease a token created when the token
// is revoked or expires: a read whose lease ID was never recorded is
// revoked when reconciliation collects its group (retired by the intent,
// its mint token revoked once no live lease is in it), and if latch never
// comes back, Vault does it by itself when the group's mint token expires,
// at most two minutes past the lease's max TTL (see vaultlease's doc).
//
// vault-pki — per-lease mint token, plus the certificate's own lifetime.
// Prepare is the same as vault-lease. A certificate's serial is only known
// from Vault's answer, so after a crash it cannot be put on the CRL by
// serial. Instead: the certificate's NotAfter is now + lease TTL (Mint
// refuses longer ones), which bounds it; and if the PKI role sets
// generate_lease=true, the certificate has a Vault lease owned by the mint
// token, so revoking the intent's mint accessor also revokes the
// certificate and adds it to the CRL.
//
// Failures between the steps are covered the same way: a Mint that fails
// after Prepare revokes its mint token itself when Vault answered (a 4xx),
// and leaves the rest to the broker's revocation of the prepared refs when
// Vault was unreachable. A request whose response was lost (Vault created
// the object, latch timed out) created an object whose secret nobody
// knows; it is revoked through the same refs, or expires with its TTL.
// Revoke is idempotent, so reconciliation and the revocation queue may
// repeat it freely.
//
// integration/backends tests each case: Prepare, Mint, drop the Minted
// value, Revoke with the prepared refs only, and check the token is inert,
// the database role is gone from pg_roles, or the certificate is on the
// CRL (generate_lease) or expires with the lease (no lease).
package backends
