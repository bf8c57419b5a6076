package broker_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/boltstore"
	"github.com/latchbroker/latch/broker/brokertest"
)

// groupingBackend groups its credentials as vault-token does under parent
// tokens: Refs names the open group of the agent, task and template
// version; RevokeGroup kills every credential minted in the group, and a
// revoked group mints nothing more.
type groupingBackend struct {
	*brokertest.Backend
	GroupRevokes atomic.Int64
	Down         atomic.Bool // RevokeGroup fails as with Vault unreachable
	mu           sync.Mutex
	open         map[string]string   // agent ␀ task ␀ version → group
	members      map[string][]string // group → lease IDs
	revoked      map[string]bool
	n            int
}

var (
	_ broker.Namer   = (*groupingBackend)(nil)
	_ broker.Grouper = (*groupingBackend)(nil)
)

func newGroupingBackend() *groupingBackend {
	return &groupingBackend{Backend: brokertest.NewBackend(), open: map[string]string{}, members: map[string][]string{}, revoked: map[string]bool{}}
}

func (b *groupingBackend) Refs(_ context.Context, req broker.MintRequest) (broker.Refs, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	key := req.Agent + "\x00" + req.Task + "\x00" + req.TemplateVersion
	if b.open[key] == "" {
		b.n++
		b.open[key] = fmt.Sprintf("g%d", b.n)
	}
	return broker.Refs{Group: b.open[key]}, nil
}

func (b *groupingBackend) Mint(ctx context.Context, req broker.MintRequest) (broker.Minted, error) {
	g := req.Prepared.Refs.Group
	b.mu.Lock()
	gone := b.revoked[g]
	b.mu.Unlock()
	if gone {
		return broker.Minted{}, fmt.Errorf("%w: group %s", broker.ErrGroupGone, g)
	}
	m, err := b.Backend.Mint(ctx, req)
	if err != nil {
		return m, err
	}
	runtime.Gosched() // let a revocation run between the mint and its commit
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.revoked[g] { // revoked while minting: the credential died with it
		b.MarkDead(req.LeaseID)
	}
	b.members[g] = append(b.members[g], req.LeaseID)
	m.Refs.Group = g
	return m, nil
}

func (b *groupingBackend) RevokeGroup(_ context.Context, g string, _ []broker.Refs) error {
	if b.Down.Load() {
		return fmt.Errorf("%w: connection refused", broker.ErrBackendUnavailable)
	}
	b.GroupRevokes.Add(1)
	b.ForgetGroup(g)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.revoked[g] = true
	for _, id := range b.members[g] {
		b.MarkDead(id)
	}
	return nil
}

func (b *groupingBackend) ForgetGroup(g string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for k, v := range b.open {
		if v == g {
			delete(b.open, k)
		}
	}
}

// newGroupingService is a Service on a settable clock whose one backend
// groups.
func newGroupingService(t *testing.T) (*boltstore.Store, *broker.Service, *groupingBackend, *brokertest.Clock) {
	b := newGroupingBackend()
	clk := brokertest.NewClock(time.Now())
	st, svc := newServiceOn(t, b, broker.Config{Now: clk.Now, RetryBase: time.Millisecond, RetryMax: time.Millisecond})
	return st, svc, b, clk
}

func issueReport(ctx context.Context, svc *broker.Service, agent string) (*broker.Issued, error) {
	return svc.Issue(ctx, broker.IssueRequest{Agent: agent, Task: "report", Params: map[string]string{"region": "eu"}, Reason: "groups"})
}

func drain(t *testing.T, svc *broker.Service) {
	t.Helper()
	for {
		n, err := svc.Leases().ProcessRevocations(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
	}
}

// TestGroups_BulkRevokeOneCallPerGroup: revoking by agent and then all
// takes one backend call per group, whatever the number of leases; every
// lease ends revoked, with an audit event naming its group; revoking one
// lease still takes its own call.
func TestGroups_BulkRevokeOneCallPerGroup(t *testing.T) {
	ctx := context.Background()
	st, svc, b, _ := newGroupingService(t)
	agents := []string{"spiffe://example.org/agent/report-a", "spiffe://example.org/agent/report-b"}
	var ids []string
	for i := range 1200 {
		res, err := issueReport(ctx, svc, agents[i%2])
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, res.Lease.ID)
	}
	if _, err := svc.Leases().Revoke(ctx, "spiffe://example.org/ops/alice", "one", broker.RevokeSelector{Lease: ids[0]}); err != nil {
		t.Fatal(err)
	}
	drain(t, svc)
	if b.Revokes.Load() != 1 || b.GroupRevokes.Load() != 0 || b.Alive(ids[0]) || !b.Alive(ids[2]) {
		t.Fatalf("one lease: %d revokes, %d group revokes; want 1 and 0", b.Revokes.Load(), b.GroupRevokes.Load())
	}
	if n, err := svc.Leases().Revoke(ctx, "spiffe://example.org/ops/alice", "agent a", broker.RevokeSelector{Agent: agents[0]}); err != nil || n != 599 {
		t.Fatalf("revoke --agent = %d, %v; want 599", n, err)
	}
	drain(t, svc)
	if n, err := svc.Leases().Revoke(ctx, "spiffe://example.org/ops/alice", "all", broker.RevokeSelector{All: true}); err != nil || n != 600 {
		t.Fatalf("revoke --all = %d, %v; want 600", n, err)
	}
	drain(t, svc)
	// One group revocation per agent's group: one for agent a's, one for
	// agent b's with --all.
	if got := b.GroupRevokes.Load(); got != 2 || b.Revokes.Load() != 1 {
		t.Fatalf("bulk revocations of 1199 leases in 2 groups: %d group revokes, %d lease revokes", got, b.Revokes.Load())
	}
	groups := map[string]bool{}
	for _, id := range ids {
		l, err := st.Lease(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if l.State != broker.StateRevoked || b.Alive(id) {
			t.Fatalf("lease %s is %s (alive %v) after the revocations", id, l.State, b.Alive(id))
		}
		groups[l.Refs.Group] = true
	}
	if len(groups) != 2 {
		t.Fatalf("leases in groups %v, want one per agent", groups)
	}
	revoked := 0
	if err := st.Events(ctx, 0, func(e broker.Event) (bool, error) {
		if e.Type == broker.EventRevoked && e.Details["group"] != "" && e.Details["requested_by"] == "spiffe://example.org/ops/alice" {
			revoked++
		}
		return true, nil
	}); err != nil {
		t.Fatal(err)
	}
	if revoked != 1199 {
		t.Fatalf("%d revoked events name their group and operator, want 1199", revoked)
	}
	// A new issue opens a new group: the revoked ones take nothing more.
	res, err := issueReport(ctx, svc, agents[0])
	if err != nil || groups[res.Lease.Refs.Group] || !b.Alive(res.Lease.ID) {
		t.Fatalf("an issue after the revocations: %v, group %v", err, res)
	}
}

// TestGroups_RevokeWinsEveryRace: issues and revocations of the agent's
// group run at once. An issue either ends with a live credential in a
// group no revocation took, or is refused: never an active lease whose
// credential died with its group.
func TestGroups_RevokeWinsEveryRace(t *testing.T) {
	ctx := context.Background()
	st, svc, b, _ := newGroupingService(t)
	const agent = "spiffe://example.org/agent/report-a"
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var issued, refused atomic.Int64
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, err := issueReport(ctx, svc, agent)
				var e *broker.Error
				switch {
				case errors.As(err, &e) && e.Code == broker.EUNAVAILABLE:
					refused.Add(1)
				case err != nil:
					t.Errorf("issue: %v", err)
					return
				default:
					issued.Add(1)
				}
			}
		})
	}
	for issued.Load() < 400 || b.GroupRevokes.Load() < 50 {
		if _, err := svc.Leases().Revoke(ctx, "spiffe://example.org/ops/alice", "race", broker.RevokeSelector{Agent: agent}); err != nil {
			t.Fatal(err)
		}
		if _, err := svc.Leases().ProcessRevocations(ctx); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	drain(t, svc)
	active, err := st.Leases(ctx, broker.LeaseFilter{State: broker.StateActive})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range active {
		if !b.Alive(l.ID) {
			t.Errorf("lease %s is active, but its credential died with group %s", l.ID, l.Refs.Group)
		}
	}
	if b.GroupRevokes.Load() == 0 || issued.Load() == 0 {
		t.Fatalf("%d group revokes, %d issues: the race was not run", b.GroupRevokes.Load(), issued.Load())
	}
	t.Logf("%d issued, %d refused, %d group revokes, %d active at the end", issued.Load(), refused.Load(), b.GroupRevokes.Load(), len(active))
}

// TestGroups_CrashedIntentCollectsItsGroup: an intent a crash left in a
// group (its credential perhaps minted, never recorded) retires the
// group: no lease commits in it any more, and once its last live lease
// ends, reconciliation revokes the group's parent, which takes the
// unrecorded credential along.
func TestGroups_CrashedIntentCollectsItsGroup(t *testing.T) {
	ctx := context.Background()
	st, svc, b, _ := newGroupingService(t)
	const agent = "spiffe://example.org/agent/report-a"
	live, err := issueReport(ctx, svc, agent)
	if err != nil {
		t.Fatal(err)
	}
	group := live.Lease.Refs.Group
	crashed := *live.Lease
	crashed.ID, crashed.State, crashed.Refs = "01JCRASHEDINTENT0000000000", broker.StatePending, broker.Refs{Group: group}
	if _, err := st.Apply(ctx, broker.Change{PutIntents: []*broker.Lease{&crashed}}); err != nil {
		t.Fatal(err)
	}
	reconcile := func() {
		t.Helper()
		if err := svc.Leases().Reconcile(ctx); err != nil {
			t.Fatal(err)
		}
	}
	reconcile()
	if b.GroupRevokes.Load() != 0 || !b.Alive(live.Lease.ID) {
		t.Fatalf("the group was revoked while its lease %s is live", live.Lease.ID)
	}
	next, err := issueReport(ctx, svc, agent)
	if err != nil || next.Lease.Refs.Group == group {
		t.Fatalf("an issue after the crash: %v, in group %s (the retired one is %s)", err, next.Lease.Refs.Group, group)
	}
	if err := svc.Leases().Release(ctx, agent, live.Lease.ID); err != nil {
		t.Fatal(err)
	}
	reconcile()
	reconcile() // idempotent: the parent is revoked once
	if b.GroupRevokes.Load() != 1 || !b.Alive(next.Lease.ID) {
		t.Fatalf("after the group's last lease ended: %d group revokes (want 1), the other group's lease alive %v",
			b.GroupRevokes.Load(), b.Alive(next.Lease.ID))
	}
	marks, err := st.RetiredGroups(ctx)
	if err != nil || len(marks) != 1 || marks[0].Group != group || marks[0].Backend != "fake" {
		t.Fatalf("retired groups %+v, %v; want %s of fake", marks, err, group)
	}
}

// TestGroups_FailedGroupRevokeIsRetried: a group revocation that meets a
// backend outage stays queued, with the error, and is tried again; once
// the backend is back, every lease of the group ends revoked.
func TestGroups_FailedGroupRevokeIsRetried(t *testing.T) {
	ctx := context.Background()
	st, svc, b, clk := newGroupingService(t)
	const agent = "spiffe://example.org/agent/report-a"
	for range 20 {
		if _, err := issueReport(ctx, svc, agent); err != nil {
			t.Fatal(err)
		}
	}
	b.Down.Store(true)
	if _, err := svc.Leases().Revoke(ctx, "spiffe://example.org/ops/alice", "outage", broker.RevokeSelector{Agent: agent}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if n, err := svc.Leases().ProcessRevocations(ctx); err != nil || n != 0 {
			t.Fatalf("ProcessRevocations during the outage = %d, %v", n, err)
		}
		clk.Add(time.Second) // past the retry backoff (RetryMax 1 ms)
	}
	leases, err := st.Leases(ctx, broker.LeaseFilter{Agent: agent})
	if err != nil {
		t.Fatal(err)
	}
	// The credentials still live: the leases stay active, and the
	// group's one revocation waits, with the error.
	for _, l := range leases {
		if l.State != broker.StateActive || !b.Alive(l.ID) {
			t.Fatalf("lease %s during the outage: %s", l.ID, l.State)
		}
	}
	due, err := st.DueRevocations(ctx, clk.Now().Add(time.Hour), 0)
	if err != nil || len(due) != 1 || due[0].Attempts != 3 || due[0].LastError == "" || due[0].Group != leases[0].Refs.Group {
		t.Fatalf("queue during the outage: %+v, %v; want the group's revocation, tried 3 times, with its error", due, err)
	}
	b.Down.Store(false)
	drain(t, svc)
	if depth, _ := st.QueueDepth(ctx); depth != 0 || b.GroupRevokes.Load() != 1 {
		t.Fatalf("after the outage: queue depth %d, %d group revokes; want 0 and 1", depth, b.GroupRevokes.Load())
	}
	for _, l := range leases {
		if got, _ := st.Lease(ctx, l.ID); got.State != broker.StateRevoked || b.Alive(l.ID) {
			t.Fatalf("lease %s after the outage: %s", l.ID, got.State)
		}
	}
}
