package server

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker/api"
	"github.com/latchbroker/latch/integration/vaultenv"
)

// etcdStoreLine is a store: value on the stack's etcd cluster, under a
// prefix of the test's own.
func etcdStoreLine(t *testing.T) string {
	return fmt.Sprintf(`{ etcd: { endpoints: ["%s"], prefix: /latch-it/%d } }`,
		strings.Join(st.Etcd.Endpoints(), `", "`), time.Now().UnixNano())
}

// TestServer_EtcdStandby: two latch servers on one etcd prefix. The first
// serves from etcd; the second waits as a standby and is not ready. When
// the first is killed (-9), the second takes over within the lock's TTL
// and serves what the first wrote: it lists the lease the first issued and
// revokes it, dead in Vault; the audit chain goes on from the first's.
func TestServer_EtcdStandby(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e := setup(t)
	store := etcdStoreLine(t)
	first := startLatchWith(t, latchOptions{Store: store})
	res, err := first.client(agentPrefix+"etcd-bot").Credentials(ctx, api.CredentialsRequest{Task: "close-ticket", Params: map[string]string{"ticket": "7"}, Reason: "etcd"})
	if err != nil {
		t.Fatalf("issue through the server on etcd: %v", err)
	}
	second := startLatchWith(t, latchOptions{Store: store, Standby: true})
	if err := second.waitReady(3 * time.Second); err == nil {
		t.Fatal("the second server is ready while the first holds the lock")
	}
	if !strings.Contains(second.log(), "waiting as a standby") {
		t.Fatalf("the second server does not say it waits:\n%s", second.log())
	}
	first.kill9()
	killed := time.Now()
	if err := second.waitReady(45 * time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("the standby served %v after the first server's kill -9", time.Since(killed).Round(100*time.Millisecond))

	admin := second.admin()
	lease, err := admin.Lease(ctx, res.Lease.ID)
	if err != nil || lease.State != api.StateActive {
		t.Fatalf("the standby's view of the first's lease: %+v, %v", lease, err)
	}
	if _, err := admin.Revoke(ctx, api.RevokeRequest{Lease: lease.ID, Reason: "after the takeover"}); err != nil {
		t.Fatal(err)
	}
	vaultenv.Eventually(t, 30*time.Second, func() error {
		alive, err := e.TokenAlive(ctx, lease.Refs.TokenAccessor)
		if err != nil || alive {
			return fmt.Errorf("the lease's token is alive (%v) after its revocation through the standby", err)
		}
		return nil
	})
	// One chain: the first's issue, then the second's revoke, in order
	// and without a gap.
	var issued, revoked uint64
	for i, ev := range auditSince(t, second, 0) {
		if ev.Seq != uint64(i+1) {
			t.Fatalf("audit event %d has sequence %d", i+1, ev.Seq)
		}
		switch {
		case ev.Type == "issue" && ev.Lease == lease.ID:
			issued = ev.Seq
		case ev.Type == "revoke" && ev.Lease == lease.ID:
			revoked = ev.Seq
		}
	}
	if issued == 0 || revoked <= issued {
		t.Fatalf("the audit chain has the first server's issue at %d and the second's revoke at %d", issued, revoked)
	}
}
