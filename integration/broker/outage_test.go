package broker

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/latchbroker/latch/backends/vaulttoken"
	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/integration/vaultenv"
)

// stopVaultAfter is the vault-token backend, which stops the Vault server
// once `after` revocations have succeeded. Revocations past that point
// wait until Vault is down, so that they all meet the outage.
type stopVaultAfter struct {
	*vaulttoken.Backend
	after   int64
	done    atomic.Int64
	once    sync.Once
	stopped chan struct{}
	at      time.Time // when Vault was down; valid once stopped is closed
}

func (b *stopVaultAfter) Revoke(ctx context.Context, refs broker.Refs) error {
	select {
	case <-b.stopped:
	default:
		if b.done.Load() >= b.after {
			b.once.Do(func() {
				_ = st.Vault.Stop()
				b.at = time.Now()
				close(b.stopped)
			})
		}
	}
	err := b.Backend.Revoke(ctx, refs)
	if err == nil {
		b.done.Add(1)
	}
	return err
}

// TestVaultOutage_Revocations stops Vault while latch works through 200
// revocations and starts it again 30 s later: none is lost, every one is
// completed, each with its audit event (invariant 4).
func TestVaultOutage_Revocations(t *testing.T) {
	e := setup(t)
	ctx := t.Context()
	start := time.Now()
	agent := agentPrefix + "outage-bot"
	const total, before, outage = 200, 50, 30 * time.Second

	t.Cleanup(func() {
		// Whatever happened, the tests that follow need Vault.
		if !st.Vault.Running() {
			if err := st.Vault.Start(context.Background()); err != nil {
				t.Errorf("restart Vault: %v", err)
			}
		}
	})
	tokens := e.backends["tokens"].(*vaulttoken.Backend)
	gate := &stopVaultAfter{Backend: tokens, after: before, stopped: make(chan struct{})}
	backends := map[string]broker.Backend{"tokens": gate, "app-db": e.backends["app-db"], "certs": e.backends["certs"]}
	l := newLatch(t, e, latchOptions{backends: backends})

	sem := make(chan struct{}, 8)
	errs := make(chan error, total)
	for i := range total {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			_, err := l.svc.Issue(ctx, broker.IssueRequest{Agent: agent, Task: taskToken,
				Params: map[string]string{"ticket": fmt.Sprint(42 + i%2)}, Reason: "outage test"})
			errs <- err
		}()
	}
	for range total {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("issued %d leases in %s", total, time.Since(start).Round(time.Millisecond))

	runCtx, stopRun := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	ready := make(chan struct{})
	go func() { runDone <- l.svc.Run(runCtx, ready) }()
	defer func() {
		stopRun()
		if err := <-runDone; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	<-ready
	// One by one: a revocation by agent would revoke the group's parent
	// once (TestGroups_* in broker cover its retries).
	for _, lease := range leasesOf(t, l, agent) {
		if n, err := l.svc.Leases().Revoke(ctx, "spiffe://example.org/ops/alice", "outage test", broker.RevokeSelector{Lease: lease.ID}); err != nil || n != 1 {
			t.Fatalf("Revoke(%s) = %d, %v; want 1", lease.ID, n, err)
		}
	}

	select {
	case <-gate.stopped:
	case <-time.After(30 * time.Second):
		t.Fatal("Vault was never stopped: the revocations did not start")
	}
	t.Logf("Vault stopped after %d revocations", gate.done.Load())
	restartAt := gate.at.Add(outage)
	time.Sleep(time.Until(restartAt) - 2*time.Second)

	// Just before the restart: the revocations met the outage and are
	// still queued, none given up.
	counts := states(t, l, agent)
	depth, err := l.store.QueueDepth(ctx)
	if err != nil {
		t.Fatal(err)
	}
	failed := 0
	for _, lease := range leasesOf(t, l, agent) {
		if lease.State == broker.StateRevoking && strings.Contains(lease.LastError, "unavailable") {
			failed++
		}
	}
	t.Logf("during the outage: %v, %d queued, %d with a failed attempt", counts, depth, failed)
	if counts[broker.StateRevoked] >= total-100 || depth != total-counts[broker.StateRevoked] || failed == 0 {
		t.Fatalf("the outage did not hold the revocations up: %v, %d queued, %d failed", counts, depth, failed)
	}
	if counts[broker.StateIrrevocable] > 0 {
		t.Fatalf("%d leases marked irrevocable during a 30 s outage", counts[broker.StateIrrevocable])
	}

	time.Sleep(time.Until(restartAt))
	if err := st.Vault.Start(ctx); err != nil {
		t.Fatalf("restart Vault: %v", err)
	}
	back := time.Now()
	t.Logf("Vault back after %s", back.Sub(gate.at).Round(time.Millisecond))

	vaultenv.Eventually(t, 60*time.Second, func() error {
		depth, err := l.store.QueueDepth(ctx)
		if err != nil {
			return err
		}
		if depth > 0 {
			return fmt.Errorf("%d revocations still queued after Vault came back", depth)
		}
		return nil
	})
	t.Logf("every revocation done %s after Vault came back", time.Since(back).Round(time.Millisecond))

	evs := events(t, l.store)
	leases := leasesOf(t, l, agent)
	if len(leases) != total {
		t.Fatalf("%d leases, want %d", len(leases), total)
	}
	want := []broker.EventType{broker.EventIssue, broker.EventRevoke, broker.EventRevoked}
	for _, lease := range leases {
		if lease.State != broker.StateRevoked {
			t.Errorf("lease %s is %s (%s)", lease.ID, lease.State, lease.LastError)
		}
		if got := eventsOf(evs, lease.ID); !slices.Equal(got, want) {
			t.Errorf("lease %s: audit events %v, want %v", lease.ID, got, want)
		}
	}
	e.assertConsistent(t, l.store, scope{agent: agent, since: start})
	if toks, err := e.LatchTokens(ctx, agent); err != nil || len(toks) != 0 {
		t.Errorf("%d tokens of %s left in Vault (%v)", len(toks), agent, err)
	}
}

func states(t testing.TB, l *latch, agent string) map[broker.LeaseState]int {
	out := map[broker.LeaseState]int{}
	for _, lease := range leasesOf(t, l, agent) {
		out[lease.State]++
	}
	return out
}
