package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/latchbroker/latch/backends/vaulttoken"
	"github.com/latchbroker/latch/broker/api"
	"github.com/latchbroker/latch/broker/client"
	"github.com/latchbroker/latch/integration/vaultenv"
)

// TestServer_Kill9 kills latch with SIGKILL during a burst of fetches and
// restarts it: every secret a client received has an active lease, and
// nothing latch created in Vault during the burst lacks one.
func TestServer_Kill9(t *testing.T) {
	t.Parallel()
	l := startLatch(t)
	e := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now().Add(-time.Second)
	agent := agentPrefix + "crash-bot"
	c := l.client(agent)

	var (
		mu       sync.Mutex
		received []*api.CredentialsResponse
		wg       sync.WaitGroup
	)
	burst, stopBurst := context.WithCancel(ctx)
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; burst.Err() == nil; i++ {
				req := api.CredentialsRequest{Task: "close-ticket", Params: map[string]string{"ticket": "42"}, Reason: "burst"}
				if w%2 == 1 {
					req = api.CredentialsRequest{Task: "nightly-report", Params: map[string]string{"region": "us"}, Reason: "burst"}
				}
				res, err := c.Credentials(burst, req)
				if err != nil {
					return // latch is gone
				}
				mu.Lock()
				received = append(received, res)
				mu.Unlock()
			}
		}()
	}
	// Kill once the burst is well under way.
	vaultenv.Eventually(t, 30*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(received) < 20 {
			return fmt.Errorf("only %d fetches in the burst", len(received))
		}
		return nil
	})
	l.kill9()
	stopBurst()
	wg.Wait()
	t.Logf("killed after %d fetches", len(received))

	l.start()
	admin := l.admin()
	active := map[string]*api.Lease{}
	for _, res := range received {
		lease, err := admin.Lease(ctx, res.Lease.ID)
		if err != nil {
			t.Fatalf("lease %s that a client received: %v", res.Lease.ID, err)
		}
		if lease.State != api.StateActive {
			t.Fatalf("lease %s that a client received is %s (%s)", lease.ID, lease.State, lease.LastError)
		}
		active[lease.ID] = lease
	}
	// What the crash left in Vault is under the groups of the received
	// leases (vault-token, vault-lease: reconciliation retired them and
	// revokes each once no live lease is in it) or revoked by
	// reconciliation (vault-pki's mint tokens). Revoking the agent's
	// leases revokes those groups' parents: then Vault holds nothing.
	res, err := admin.Revoke(ctx, api.RevokeRequest{Agent: agent, Reason: "after the crash"})
	if err != nil || res.Count < len(active) {
		t.Fatalf("revoke --agent = %+v, %v; want at least the %d received leases", res, err, len(active))
	}
	var notes []string
	vaultenv.Eventually(t, 30*time.Second, func() error { return untracked(ctx, e, admin, agent, start, &notes) })
	t.Logf("%d received leases active until revoked; then Vault holds nothing untracked", len(active))
	for _, n := range notes {
		t.Log("tolerated:", n)
	}
}

// untracked lists what latch created in Vault for agent since start
// without an active lease: tokens (by metadata), latch-<lease> policies,
// database leases of report-us (the crash test's own role).
// A token latch could not have tracked, made powerless, is noted instead.
func untracked(ctx context.Context, e *vaultenv.Env, admin *client.Client, agent string, start time.Time, notes *[]string) error {
	*notes = nil
	activeLease := func(id string) (*api.Lease, bool, error) {
		lease, err := admin.Lease(ctx, id)
		if client.Code(err) == api.CodeNotFound {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, err
		}
		return lease, lease.State == api.StateActive, nil
	}
	var problems []string
	toks, err := e.LatchTokens(ctx, agent)
	if err != nil {
		return err
	}
	for _, tok := range toks {
		lease, ok, err := activeLease(tok.Lease)
		switch {
		case err != nil:
			return err
		case ok:
		case lease != nil && lease.Refs.TokenAccessor == "" && slices.Equal(tok.Policies, []string{lease.Refs.Policy}):
			// latch died between Mint and commit and never learnt the
			// accessor: the token was never delivered, and it dies with
			// the lease TTL (vaulttoken's doc: crash safety, restated);
			// its shared policy is collected once no lease names it.
			exists, err := e.PolicyExists(ctx, tok.Policies[0])
			if err != nil {
				return err
			}
			if tok.TTL > lease.MaxExpiresAt.Sub(lease.IssuedAt) {
				problems = append(problems, fmt.Sprintf("token %s of %s lease %s lives %s, past the lease TTL", tok.Accessor, lease.State, lease.ID, tok.TTL))
			} else {
				*notes = append(*notes, fmt.Sprintf("token %s of %s lease %s (accessor never recorded, never delivered; its shared policy exists: %v) expires in %s",
					tok.Accessor, lease.State, lease.ID, exists, tok.TTL))
			}
		case lease != nil && lease.State != api.StateActive && lease.Refs.MintAccessor == "" && slices.Equal(tok.Policies, []string{"latch_mint"}):
			// latch died between creating the mint token and recording its
			// accessor: nobody knows the token, and Vault revokes it (with
			// anything it minted) at the lease TTL. Reconciliation cannot
			// find it (see the report of this test).
			if tok.TTL > lease.MaxExpiresAt.Sub(lease.IssuedAt) {
				problems = append(problems, fmt.Sprintf("unrecorded mint token %s of %s lease %s lives %s, past the lease TTL", tok.Accessor, lease.State, lease.ID, tok.TTL))
			} else {
				*notes = append(*notes, fmt.Sprintf("mint token %s of %s lease %s (accessor never recorded) is alive; it expires in %s",
					tok.Accessor, lease.State, lease.ID, tok.TTL))
			}
		default:
			state := "no lease record"
			if lease != nil {
				state = lease.State + " lease"
			}
			problems = append(problems, fmt.Sprintf("token %s (policies %v) of %s %s", tok.Accessor, tok.Policies, state, tok.Lease))
		}
	}
	policies, err := e.LatchPolicies(ctx)
	if err != nil {
		return err
	}
	for _, p := range policies {
		if strings.HasPrefix(p, vaulttoken.SharedPrefix) {
			continue // shared by content among agents and tests; collected by the Service (TestPolicies_*)
		}
		id := strings.ToUpper(strings.TrimPrefix(p, vaulttoken.PolicyPrefix)) // Vault lowercases policy names
		u, err := ulid.ParseStrict(id)
		if err != nil || ulid.Time(u.Time()).Before(start) {
			continue // another test's
		}
		lease, ok, err := activeLease(id)
		if err != nil {
			return err
		}
		if lease != nil && lease.Agent != agent {
			continue
		}
		if !ok {
			state := "no lease record"
			if lease != nil {
				state = lease.State + " lease"
			}
			problems = append(problems, fmt.Sprintf("policy %s (%s)", p, state))
		}
	}
	dbLeases, err := e.DBLeases(ctx, "report-us")
	if err != nil {
		return err
	}
	tracked := map[string]bool{}
	res, err := admin.Leases(ctx, api.LeaseQuery{Agent: agent, State: api.StateActive, Limit: 1000})
	if err != nil {
		return err
	}
	for _, lease := range res.Leases {
		tracked[lease.Refs.VaultLeaseID] = true
	}
	for _, id := range dbLeases {
		if !tracked[id] {
			problems = append(problems, "database lease "+id)
		}
	}
	if len(problems) > 0 {
		return errors.New("untracked in Vault: " + strings.Join(problems, "; "))
	}
	return nil
}
