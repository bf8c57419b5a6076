// Package vault is the Vault client every latch backend shares: one place
// for the address and TLS settings, per-call timeouts, retries, latch's own
// authentication and its renewal, and a latency metric per operation.
//
// What it guarantees, and why:
//
//   - Every call has a deadline: the caller's context bounds the whole call,
//     retries included, and each attempt also gets Config.Timeout, so a Vault
//     that accepts connections but never answers cannot hang a request.
//   - Only failures that may pass are retried — connection errors, 5xx
//     (except 501), 429 and 412 — with exponential backoff and full jitter.
//     A 4xx is Vault's considered answer and is returned at once. Errors are
//     *Error values; retryable ones match broker.ErrBackendUnavailable with
//     errors.Is, which is how the broker's revocation queue knows to keep a
//     revocation queued.
//   - latch authenticates with a token file, AppRole, or its own JWT-SVID
//     (Vault's JWT auth; the SVID comes from a JWTSource the caller supplies,
//     so this package does not depend on attest). Run keeps the token alive
//     with the API's LifetimeWatcher and logs in again when renewal ends
//     (max TTL reached, or the token was revoked), so latch never runs on an
//     expired token. A call that gets 403 on latch's own token triggers one
//     re-login (rate-limited) and one retry.
//   - TLS is 1.2 or newer, 1.3 preferred (Go's default order), verified
//     against Config.CACert or the system roots. VAULT_* environment
//     variables are ignored: latch's Vault connection comes from its config
//     file only, so a stray VAULT_SKIP_VERIFY cannot weaken it.
//   - The token-store and lease helpers (CreateToken, RevokeAccessor,
//     RevokeLease, PrepareMintToken ...) are what the vault-token,
//     vault-lease and vault-pki backends are built from.
//
// Usage:
//
//	c, err := vault.New(vault.Config{
//		Address: "https://vault.internal:8200",
//		CACert:  "/etc/latch/vault-ca.pem",
//		Auth: vault.AuthConfig{Method: vault.AuthAppRole,
//			RoleIDFile: "/etc/latch/role-id", SecretIDFile: "/etc/latch/secret-id"},
//		Metrics: stats, // a *promstats.Metrics, or any Metrics
//	})
//	if err := c.Login(ctx); err != nil { ... }   // fail fast at start
//	go c.Run(ctx)                                // renew; re-login when renewal ends
//	defer c.Close()
//	tokens, err := vaulttoken.New(c, vaulttoken.Config{})
package vault
