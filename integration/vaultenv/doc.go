// Package vaultenv sets up the harness's Vault for latch the way an
// operator would, following README.md's "The Vault policy latch needs":
// a database engine on the harness PostgreSQL, a PKI mount, KV data,
// the policies and token roles of the README, and an AppRole login for
// latch with exactly the README policy. Root is used only for that set-up
// and for the probes (Root's view of tokens, policies, leases, CRLs and
// PostgreSQL roles) that integration tests check latch against.
//
// It is shared by the integration test packages; tests never mock Vault.
//
//	var st *stack.Stack // from stack.Main
//	e, err := vaultenv.Setup(ctx, st, vaultenv.Options{DBRoles: []string{"report-eu"}})
//	c, err := e.Login(ctx, e.Config()) // latch's own client, README policy
//	vaultenv.Eventually(t, 30*time.Second, func() error { ... })
package vaultenv
