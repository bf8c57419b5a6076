package backends

import (
	"context"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
)

// The benchmarks mint against the real Vault (and PostgreSQL) through
// latch's AppRole client with the README policy, one Mint at a time, and
// revoke everything after the timed loop. The Vault* benchmarks are the
// baselines, with the root token and no latch code: BenchmarkVaultTokenCreate
// (one bare auth/token/create, the cheapest thing Vault mints), and the bare
// engine calls vault-lease and vault-pki wrap.
//
//	go test -run '^$' -bench . ./integration/backends/

func benchMint(b *testing.B, be broker.Backend, req func() broker.MintRequest) {
	ctx := context.Background()
	var refs []broker.Refs
	for b.Loop() {
		r := req()
		if err := prepare(ctx, be, &r); err != nil {
			b.Fatal(err)
		}
		m, err := be.Mint(ctx, r)
		if err != nil {
			b.Fatal(err)
		}
		refs = append(refs, m.Refs)
	}
	for _, r := range refs {
		if err := be.Revoke(ctx, r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMint_VaultToken: policy write + token create (Refs creates the
// group parent once).
func BenchmarkMint_VaultToken(b *testing.B) {
	e := setup(b)
	benchMint(b, e.tokens, func() broker.MintRequest {
		r := request("close-ticket", 5*time.Minute)
		r.Policy = ticketPolicy
		return r
	})
}

// BenchmarkMint_VaultLease: a database/creds read with the group's mint
// token (a CREATE ROLE in PostgreSQL).
func BenchmarkMint_VaultLease(b *testing.B) {
	e := setup(b)
	benchMint(b, e.leases, func() broker.MintRequest { return leaseRequest(5 * time.Minute) })
}

// BenchmarkMint_VaultPKI: mint token + pki/issue with a P-256 key.
func BenchmarkMint_VaultPKI(b *testing.B) {
	e := setup(b)
	benchMint(b, e.certs, func() broker.MintRequest { return certRequest(5 * time.Minute) })
}

// BenchmarkVaultTokenCreate is the baseline: a bare token create.
func BenchmarkVaultTokenCreate(b *testing.B) {
	e := setup(b)
	ctx := context.Background()
	var accessors []string
	for b.Loop() {
		s, err := e.Root.Logical().WriteWithContext(ctx, "auth/token/create", map[string]any{
			"policies": []string{"default"}, "ttl": "5m",
		})
		if err != nil {
			b.Fatal(err)
		}
		accessors = append(accessors, s.Auth.Accessor)
	}
	for _, a := range accessors {
		if _, err := e.Root.Logical().WriteWithContext(ctx, "auth/token/revoke-accessor", map[string]any{"accessor": a}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVaultDatabaseCreds is the bare engine read vault-lease wraps:
// database/creds/<role> with the root token, no mint token.
func BenchmarkVaultDatabaseCreds(b *testing.B) {
	e := setup(b)
	ctx := context.Background()
	var leases []string
	for b.Loop() {
		s, err := e.Root.Logical().ReadWithContext(ctx, "database/creds/"+dbRole)
		if err != nil {
			b.Fatal(err)
		}
		leases = append(leases, s.LeaseID)
	}
	for _, l := range leases {
		if err := e.Root.Sys().RevokeWithContext(ctx, l); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVaultPKIIssue is the bare issue call vault-pki wraps.
func BenchmarkVaultPKIIssue(b *testing.B) {
	e := setup(b)
	ctx := context.Background()
	for b.Loop() {
		if _, err := e.Root.Logical().WriteWithContext(ctx, pkiMount+"/issue/"+pkiRole, map[string]any{
			"common_name": "checkout.eu.svc.example.org", "alt_names": "checkout.svc.example.org",
			"uri_sans": "spiffe://example.org/service/checkout", "ttl": "300s",
		}); err != nil {
			b.Fatal(err)
		}
	}
}
