// Package broker tests broker.Service end to end with the real Vault
// backends (vault-token, vault-lease on Vault's database engine and a real
// PostgreSQL, vault-pki), a real bbolt file, and latch's own Vault client
// logged in through AppRole with exactly the policy in README.md.
//
// Vault runs as a persistent server (stack.WithPersistentVault) so that
// the outage test can stop it and start it again with its state. The
// kill -9 tests build crashchild with the failpoints tag, run it as latch,
// let it die at a failpoint, restart it, and check that Vault and the
// store agree: no lease without its Vault object, no Vault object without
// a lease or a completed revocation, no revocation left queued.
package broker
