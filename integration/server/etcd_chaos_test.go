package server

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/latchbroker/latch/broker/api"
	"github.com/latchbroker/latch/broker/client"
	"github.com/latchbroker/latch/integration/vaultenv"
)

// TestServer_EtcdKill9: two replicas on a 3-member etcd cluster. While
// agents issue and an operator revokes through both, replica A is killed
// (-9) and restarted ten times. Then: every lease a client was answered
// with is stored, no lease ID was answered twice, every intent of a dead
// replica was reconciled by a survivor within 30 s of the kill, every
// lease latch lists as revoked is dead in Vault, latch audit verify
// passes, and an event stream on B saw every event, in order.
func TestServer_EtcdKill9(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e := setup(t)
	r := startReplicas(t, 2)
	a, b := r[0], r[1]
	prefix := storePrefix(t, a)
	stream, from := eventsFromNow(ctx, t, b)
	streamed := make(chan uint64, 100000)
	go func() {
		for {
			ev, err := stream.Next()
			if err != nil {
				close(streamed)
				return
			}
			streamed <- ev.Seq
		}
	}()

	load := newChaosLoad(t, a, b, agentPrefix+"kill9-bot")
	loadCtx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	load.run(loadCtx, &wg)
	for round := 1; round <= 10; round++ {
		load.awaitIssuedThrough(ctx, t, 0, 5) // A has served this round
		name := replicaName(t, a)
		a.kill9()
		killed := time.Now()
		n := awaitIntentsReconciled(ctx, t, prefix, name, 30*time.Second)
		t.Logf("round %d: the killed replica's %d intents reconciled within %v", round, n, time.Since(killed).Round(100*time.Millisecond))
		a.start()
	}
	stopLoad()
	wg.Wait()
	load.check(ctx, t, e, b)
	verifyChain(ctx, t, b)

	// B's stream saw every event to the end of the log, in order.
	last := auditSince(t, b, 0)
	for want := from + 1; want <= last[len(last)-1].Seq; want++ {
		select {
		case seq, ok := <-streamed:
			if !ok || seq != want {
				t.Fatalf("B's event stream gave %d (open %v), want %d", seq, ok, want)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("B's event stream stopped before event %d", want)
		}
	}
}

// chaosLoad issues through both replicas and revokes through both, and
// records what clients were answered.
type chaosLoad struct {
	agent  string
	start  time.Time
	agents [2]*client.Client // through a, b
	ops    [2]*client.Client

	mu      sync.Mutex
	issued  map[string]api.Lease // acknowledged, by lease ID
	order   []string             // acknowledged lease IDs, in order
	dups    []string
	through [2]int // acknowledged issues by replica
	revoked []string
	more    chan struct{} // a tick per acknowledged issue
	acked   []time.Time   // when each issue was acknowledged

	noRevokes bool // issue only
}

func newChaosLoad(t *testing.T, a, b *latch, bot string) *chaosLoad {
	return &chaosLoad{
		agent: bot, start: time.Now(),
		agents: [2]*client.Client{a.client(bot), b.client(bot)},
		ops:    [2]*client.Client{a.client("spiffe://example.org/ops/alice"), b.client("spiffe://example.org/ops/alice")},
		issued: map[string]api.Lease{}, more: make(chan struct{}, 1),
	}
}

// run starts two issuers per replica and one revoker alternating between
// them, until ctx ends. Errors from a replica that is down are expected:
// a client behind a load balancer would have gone to the other.
func (l *chaosLoad) run(ctx context.Context, wg *sync.WaitGroup) {
	for i := range 4 {
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				via := i % 2
				res, err := l.agents[via].Credentials(ctx, api.CredentialsRequest{Task: "close-ticket",
					Params: map[string]string{"ticket": "42"}, Reason: "chaos", RequestID: fmt.Sprintf("chaos-%d-%d", i, n)})
				if err == nil {
					l.acknowledge(via, res.Lease)
				}
			}
		})
	}
	if l.noRevokes {
		return
	}
	wg.Go(func() {
		for n := 0; ctx.Err() == nil; n++ {
			id := l.pick()
			if id == "" {
				select {
				case <-ctx.Done():
				case <-l.more:
				}
				continue
			}
			if _, err := l.ops[n%2].Revoke(ctx, api.RevokeRequest{Lease: id, Reason: "chaos"}); err == nil {
				l.mu.Lock()
				l.revoked = append(l.revoked, id)
				l.mu.Unlock()
			}
		}
	})
}

func (l *chaosLoad) acknowledge(via int, lease api.Lease) {
	l.mu.Lock()
	if _, dup := l.issued[lease.ID]; dup {
		l.dups = append(l.dups, lease.ID)
	}
	l.issued[lease.ID] = lease
	l.order = append(l.order, lease.ID)
	l.acked = append(l.acked, time.Now())
	l.through[via]++
	l.mu.Unlock()
	select {
	case l.more <- struct{}{}:
	default:
	}
}

// pick is the next lease to revoke: every third acknowledged one, in
// order; "" when there is none yet. A revocation that failed (its
// replica was down) is tried again through the other.
func (l *chaosLoad) pick() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if k := len(l.revoked) * 3; k < len(l.order) {
		return l.order[k]
	}
	return ""
}

// longestPause is the longest time between acknowledged issues after
// since.
func (l *chaosLoad) longestPause(since time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	var longest time.Duration
	prev := since
	for _, at := range l.acked {
		if at.Before(since) {
			continue
		}
		longest = max(longest, at.Sub(prev))
		prev = at
	}
	return longest
}

// awaitIssuedThrough waits until n more issues were acknowledged through
// replica via.
func (l *chaosLoad) awaitIssuedThrough(ctx context.Context, t *testing.T, via, n int) {
	t.Helper()
	l.mu.Lock()
	want := l.through[via] + n
	l.mu.Unlock()
	for {
		l.mu.Lock()
		got := l.through[via]
		l.mu.Unlock()
		if got >= want {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("replica %d acknowledged %d of %d issues", via, got, want)
		case <-l.more:
		}
	}
}

// check: every acknowledged lease is stored, none twice, and every lease
// latch lists as revoked is dead in Vault.
func (l *chaosLoad) check(ctx context.Context, t *testing.T, e *vaultenv.Env, b *latch) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.dups) > 0 {
		t.Fatalf("lease IDs answered twice: %v", l.dups)
	}
	admin := b.admin()
	for id := range l.issued {
		if _, err := admin.Lease(ctx, id); err != nil {
			t.Fatalf("acknowledged lease %s: %v", id, err)
		}
	}
	vaultenv.Eventually(t, 30*time.Second, func() error {
		res, err := admin.Leases(ctx, api.LeaseQuery{State: api.StateRevoking, Limit: api.MaxListLimit})
		if err == nil && len(res.Leases) > 0 {
			err = fmt.Errorf("%d leases still revoking", len(res.Leases))
		}
		return err
	})
	res, err := admin.Leases(ctx, api.LeaseQuery{State: api.StateRevoked, Limit: api.MaxListLimit})
	if err != nil {
		t.Fatal(err)
	}
	unknown := 0 // never delivered, the accessor never learnt: under a retired group
	for _, lease := range res.Leases {
		if lease.Refs.TokenAccessor == "" {
			unknown++
			continue
		}
		if alive, err := e.TokenAlive(ctx, lease.Refs.TokenAccessor); err != nil || alive {
			t.Fatalf("lease %s is revoked in latch, its token alive in Vault (%v)", lease.ID, err)
		}
	}
	t.Logf("%d leases acknowledged (%d through A, %d through B), %d revoked by the operator, %d revoked in all, each dead in Vault (%d never delivered, without an accessor)",
		len(l.issued), l.through[0], l.through[1], len(l.revoked), len(res.Leases), unknown)
	// Then nothing of the agent's is left in Vault once its leases are
	// revoked: not even a token a killed replica minted and never learnt
	// of (it dies with its group's parent).
	if _, err := admin.Revoke(ctx, api.RevokeRequest{Agent: l.agent, Reason: "after the chaos"}); err != nil {
		t.Fatal(err)
	}
	var notes []string
	vaultenv.Eventually(t, 30*time.Second, func() error { return untracked(ctx, e, admin, l.agent, l.start, &notes) })
	for _, n := range notes {
		t.Log("tolerated:", n)
	}
}

// verifyChain runs latch audit verify on l's store.
func verifyChain(ctx context.Context, t *testing.T, l *latch) {
	t.Helper()
	if r := l.cli(ctx, nil, "audit", "verify", "--config", l.config); r.code != 0 || !strings.Contains(r.stdout, "chain intact") {
		t.Fatalf("latch audit verify on etcd: %s", r)
	}
}

// storePrefix is the etcd prefix of l's config.
func storePrefix(t *testing.T, l *latch) string {
	t.Helper()
	config, err := os.ReadFile(l.config)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`prefix: (\S+) `).FindStringSubmatch(string(config))
	if m == nil {
		t.Fatalf("%s names no etcd prefix", l.config)
	}
	return m[1]
}

// replicaName is the replica name l's running server logged.
func replicaName(t *testing.T, l *latch) string {
	t.Helper()
	m := regexp.MustCompile(`"msg":"serving from etcd".*"replica":"([^"]+)"`).FindStringSubmatch(l.log())
	if m == nil {
		t.Fatalf("the server logged no replica name:\n%s", l.log())
	}
	return m[1]
}

// awaitIntentsReconciled waits until no intent under prefix names the
// replica, and returns how many did at first.
func awaitIntentsReconciled(ctx context.Context, t *testing.T, prefix, replica string, within time.Duration) int {
	t.Helper()
	cli, err := st.Etcd.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	first := -1
	vaultenv.Eventually(t, within, func() error {
		intents, err := cli.Get(ctx, prefix+"/i/", clientv3.WithPrefix())
		if err != nil {
			return err
		}
		var left []string
		for _, kv := range intents.Kvs {
			var l struct{ ID, Replica string }
			if err := json.Unmarshal(kv.Value, &l); err != nil {
				return err
			}
			if l.Replica == replica {
				left = append(left, l.ID)
			}
		}
		if first < 0 {
			first = len(left)
		}
		if len(left) > 0 {
			return fmt.Errorf("the intents %v of replica %s, which is dead, are not reconciled", left, replica)
		}
		return nil
	})
	return first
}

// TestServer_EtcdPausedOwner: the replica that runs the duties (A) is
// stopped (SIGSTOP) past its session's TTL; B takes the duties over and
// works the revocations queued meanwhile. When A is continued (SIGCONT)
// it does not act on the duties it lost: it stops, saying so, and every
// lease has one revocation in the audit log and its record revoked.
func TestServer_EtcdPausedOwner(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e := setup(t)
	r := startReplicas(t, 2)
	a, b := r[0], r[1]
	if !strings.Contains(a.log(), "elected to run the background duties") {
		t.Fatalf("the first replica does not run the duties:\n%s", a.log())
	}
	bot := agentPrefix + "paused-owner-bot"
	agent := b.client(bot)
	var leases []api.Lease
	for i := range 20 {
		res, err := agent.Credentials(ctx, api.CredentialsRequest{Task: "close-ticket", Params: map[string]string{"ticket": "42"}, Reason: fmt.Sprint("before the pause ", i)})
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, res.Lease)
	}
	a.signal(syscall.SIGSTOP)
	stopped := true
	defer func() {
		if stopped {
			a.signal(syscall.SIGCONT) // let the cleanup stop it
		}
	}()
	if _, err := b.admin().Revoke(ctx, api.RevokeRequest{Agent: bot, Reason: "while A is stopped"}); err != nil {
		t.Fatal(err)
	}
	paused := time.Now()
	vaultenv.Eventually(t, 45*time.Second, func() error {
		for _, l := range leases {
			got, err := b.admin().Lease(ctx, l.ID)
			if err != nil || got.State != api.StateRevoked {
				return fmt.Errorf("lease %s: %+v, %v; want revoked by B", l.ID, got, err)
			}
			if alive, err := e.TokenAlive(ctx, l.Refs.TokenAccessor); err != nil || alive {
				return fmt.Errorf("lease %s's token is alive (%v)", l.ID, err)
			}
		}
		return nil
	})
	if !strings.Contains(b.log(), "elected to run the background duties") {
		t.Fatalf("the leases were revoked but B does not say it took the duties over:\n%s", b.log())
	}
	t.Logf("B took the duties over and revoked the queue %v after A's SIGSTOP", time.Since(paused).Round(100*time.Millisecond))
	a.signal(syscall.SIGCONT)
	stopped = false
	select {
	case <-a.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("A goes on after its SIGCONT, with duties it lost:\n%s", a.log())
	}
	if !strings.Contains(a.log(), "lost this replica's etcd session") {
		t.Fatalf("A stopped without saying why:\n%s", a.log())
	}
	revoked := map[string]int{}
	for _, ev := range auditSince(t, b, 0) {
		if ev.Type == "revoked" {
			revoked[ev.Lease]++
		}
	}
	for _, l := range leases {
		if revoked[l.ID] != 1 {
			t.Fatalf("lease %s has %d revoked events, want 1", l.ID, revoked[l.ID])
		}
	}
	verifyChain(ctx, t, b)
}

// TestServer_EtcdLeaderKilled: while agents issue through two replicas,
// the etcd leader is killed (-9). Issuance pauses for the election and
// resumes; every lease a client was answered with is stored.
func TestServer_EtcdLeaderKilled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e := setup(t)
	r := startReplicas(t, 2)
	load := newChaosLoad(t, r[0], r[1], agentPrefix+"leader-bot")
	load.noRevokes = true
	loadCtx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	load.run(loadCtx, &wg)
	load.awaitIssuedThrough(ctx, t, 1, 20)
	leader, err := st.Etcd.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st.Etcd.Kill(leader)
	killed := time.Now()
	defer func() {
		if err := st.Etcd.Restart(context.WithoutCancel(ctx), leader); err != nil {
			t.Errorf("restart etcd member %d: %v", leader, err)
		}
	}()
	load.awaitIssuedThrough(ctx, t, 0, 20)
	load.awaitIssuedThrough(ctx, t, 1, 20)
	stopLoad()
	wg.Wait()
	pause := load.longestPause(killed.Add(-time.Second))
	t.Logf("issuance resumed after the etcd leader's kill -9: the longest pause between acknowledged issues around it was %v", pause.Round(10*time.Millisecond))
	if pause > 5*time.Second {
		t.Errorf("issuance paused %v: longer than an election (1 s here) plus a few seconds", pause)
	}
	load.check(ctx, t, e, r[1])
}
