package backends

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/integration/vaultenv"
)

// The crash tests play the broker's part as it will be after a kill -9
// between Mint and the commit of the lease: the intent holds only what
// Prepare returned, the Minted value is lost with the process, and
// reconciliation calls Revoke with the intent's refs. (The broker service
// with its failpoint does not exist yet; these pin down the backends' half
// of the guarantee.)

// crashAfterMint prepares, "stores the intent", mints, and loses the result
// — except what the test needs to check afterwards, which no real caller
// would have.
func crashAfterMint(t *testing.T, b broker.Backend, req broker.MintRequest) (intent broker.Refs, lost broker.Minted) {
	t.Helper()
	if err := prepare(t.Context(), b, &req); err != nil {
		t.Fatalf("prepare: %v", err)
	}
	intent = req.Prepared.Refs // written to bbolt before the Vault call
	lost, err := b.Mint(t.Context(), req)
	if err != nil {
		t.Fatalf("Mint: %v", err)
	}
	// kill -9 here: no lease record, no Minted.
	return intent, lost
}

// reconcile is what the broker does at restart for an uncommitted intent.
func reconcile(t *testing.T, b broker.Backend, intent broker.Refs) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := b.Revoke(ctx, intent); err != nil {
		t.Fatalf("reconciliation Revoke(%+v): %v", intent, err)
	}
}

// TestCrashSafety_VaultToken: the intent names the shared policy and the
// group (Refs, known before Mint). Reconciliation cannot revoke a token it
// never learnt of alone: Revoke says so (ErrExpiresOnItsOwn) and the
// token, never delivered, expires at the lease TTL — or, as here where no
// other lease renders the same policy, is disarmed as soon as the Service
// collects the policy nothing names any more; and it dies with its group
// when a revocation by agent, task, template or all takes the group.
func TestCrashSafety_VaultToken(t *testing.T) {
	e := setup(t)
	ctx := t.Context()
	req := request("close-ticket", 2*time.Minute)
	req.Policy = ticketPolicy + "# crash test\n"
	intent, err := e.tokens.Refs(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if intent.Policy == "" || intent.Group == "" || intent.TokenAccessor != "" {
		t.Fatalf("intent refs %+v: want the policy and the group only (known before Mint)", intent)
	}
	req.Prepared.Refs = intent
	lost, err := e.tokens.Mint(ctx, req) // kill -9 after this: no lease record, no Minted
	if err != nil {
		t.Fatal(err)
	}
	if err := e.tokens.Revoke(ctx, intent); !errors.Is(err, broker.ErrExpiresOnItsOwn) {
		t.Fatalf("reconciliation Revoke(%+v) = %v, want ErrExpiresOnItsOwn", intent, err)
	}
	if err := e.tokens.DeletePolicy(ctx, intent.Policy); err != nil { // the Service's collection
		t.Fatal(err)
	}
	if ok, _ := e.PolicyExists(ctx, intent.Policy); ok {
		t.Fatalf("policy %s survived its collection", intent.Policy)
	}
	// The orphaned token is then powerless: its only policy is gone
	// and it never had the default policy ...
	agent := e.clientWithToken(t, lost.Secret.Reveal()["token"])
	if _, err := agent.KVv2("secret").Get(ctx, "tickets/42"); vaultenv.StatusOf(err) != http.StatusForbidden {
		t.Fatalf("orphaned token reads the rendered path after reconciliation: %v", err)
	}
	// ... and bounded by the lease TTL, which no renewal can pass.
	info, err := e.LookupAccessor(ctx, lost.Refs.TokenAccessor)
	if err != nil {
		t.Fatal(err)
	}
	if ttl, _ := info.TokenTTL(); ttl > req.TTL {
		t.Fatalf("orphaned token TTL %s beyond the lease TTL %s", ttl, req.TTL)
	}
	if alive, err := e.tokens.Lookup(ctx, intent); err != nil || alive {
		t.Fatalf("Lookup(intent) after reconciliation = %v, %v", alive, err)
	}
	// Revoking the group revokes the token latch never learnt of.
	if err := e.tokens.RevokeGroup(ctx, intent.Group, nil); err != nil {
		t.Fatal(err)
	}
	if alive, err := e.tokens.Lookup(ctx, lost.Refs); err != nil || alive {
		t.Fatalf("the lost token outlived its group's revocation: alive %v, %v", alive, err)
	}
}

func TestCrashSafety_VaultLease(t *testing.T) {
	e := setup(t)
	ctx := t.Context()
	intent, lost := crashAfterMint(t, e.leases, leaseRequest(10*time.Minute))
	if intent.Group == "" || intent.VaultLeaseID != "" || intent.MintAccessor != "" {
		t.Fatalf("intent refs %+v: want the group's mint token accessor only", intent)
	}
	creds := lost.Secret.Reveal()
	if !e.pgRoleExists(ctx, t, creds["username"]) {
		t.Fatal("no database role after Mint")
	}
	// Reconciliation cannot revoke the lease alone: it retires the group
	// and, once no live lease is in it, revokes the group's mint token.
	if err := e.leases.Revoke(ctx, intent); !errors.Is(err, broker.ErrExpiresOnItsOwn) {
		t.Fatalf("reconciliation Revoke(%+v) = %v, want ErrExpiresOnItsOwn", intent, err)
	}
	if err := e.leases.RevokeGroup(ctx, intent.Group, nil); err != nil {
		t.Fatal(err)
	}

	// Revoking the mint token revokes the leases it created; Vault does
	// that part asynchronously.
	vaultenv.Eventually(t, 30*time.Second, func() error {
		if e.pgRoleExists(ctx, t, creds["username"]) {
			return errors.New("database role survives reconciliation")
		}
		return nil
	})
	if _, err := e.PGLogin(ctx, creds["username"], creds["password"]); err == nil {
		t.Fatal("login works after reconciliation")
	}
	if alive, err := e.leases.Lookup(ctx, lost.Refs); err != nil || alive {
		t.Fatalf("Lookup(full refs) after reconciliation = %v, %v", alive, err)
	}
}

func TestCrashSafety_VaultPKI(t *testing.T) {
	e := setup(t)
	ctx := t.Context()

	t.Run("GenerateLease", func(t *testing.T) {
		// With generate_lease the certificate's Vault lease belongs to
		// the mint token: reconciliation puts it on the CRL.
		if err := e.SetPKIRole(ctx, true); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = e.SetPKIRole(context.Background(), false) }()
		intent, lost := crashAfterMint(t, e.certs, certRequest(10*time.Minute))
		if intent.MintAccessor == "" || intent.Serial != "" {
			t.Fatalf("intent refs %+v", intent)
		}
		if lost.Refs.VaultLeaseID == "" {
			t.Fatal("role with generate_lease issued no lease")
		}
		reconcile(t, e.certs, intent)
		serial := serialHex(t, lost.Refs.Serial)
		vaultenv.Eventually(t, 30*time.Second, func() error {
			if !e.crlSerials(ctx, t)[serial] {
				return errors.New("certificate not on the CRL after reconciliation")
			}
			return nil
		})
		if alive, err := e.certs.Lookup(ctx, lost.Refs); err != nil || alive {
			t.Fatalf("Lookup after reconciliation = %v, %v", alive, err)
		}
	})

	t.Run("NoLease", func(t *testing.T) {
		// Without a lease nothing can find the certificate, so the
		// bound is its lifetime: NotAfter = the lease TTL.
		req := certRequest(2 * time.Minute)
		intent, lost := crashAfterMint(t, e.certs, req)
		reconcile(t, e.certs, intent)
		cert := parseCert(t, lost.Secret.Reveal()["certificate"])
		if d := time.Until(cert.NotAfter); d > req.TTL {
			t.Fatalf("orphaned certificate valid for %s, beyond the lease TTL %s", d, req.TTL)
		}
		if alive, err := e.certs.Lookup(ctx, intent); err != nil || alive {
			t.Fatalf("mint token alive after reconciliation: %v, %v", alive, err)
		}
		_ = e.certs.Revoke(ctx, lost.Refs)
	})
}
