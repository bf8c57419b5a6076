package broker_test

import (
	"context"
	"errors"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/boltstore"
	"github.com/latchbroker/latch/broker/brokertest"
)

// sharingBackend shares policies among its leases, as
// vault-token does by content: Mint writes it unless its cache says it
// did, DeletePolicy forgets it and then deletes it. "Vault" is policies;
// what each token was minted with is in tokens.
type sharingBackend struct {
	*brokertest.Backend
	mu               sync.Mutex
	policies         map[string]bool // in Vault
	cache            map[string]bool // what Mint believes it wrote
	deleted          atomic.Int64
	deleting         map[string]bool // between forgetting and deleting
	mintDuringDelete atomic.Int64    // mints that wrote a policy being deleted
}

func newSharingBackend() *sharingBackend {
	return &sharingBackend{Backend: brokertest.NewBackend(), policies: map[string]bool{}, cache: map[string]bool{}, deleting: map[string]bool{}}
}

// policyOf shares one policy between each two agents (report-a and
// report-b, …): often in use, and often unused for a moment.
func policyOf(req broker.MintRequest) string {
	last := req.Agent[len(req.Agent)-1]
	return "p-" + string(rune('a'+(last-'a')/2))
}

var (
	_ broker.Namer           = (*sharingBackend)(nil)
	_ broker.PolicyCollector = (*sharingBackend)(nil)
)

func (b *sharingBackend) Refs(_ context.Context, req broker.MintRequest) (broker.Refs, error) {
	return broker.Refs{Policy: policyOf(req)}, nil
}

func (b *sharingBackend) Mint(ctx context.Context, req broker.MintRequest) (broker.Minted, error) {
	name := policyOf(req)
	b.mu.Lock()
	if !b.cache[name] {
		b.policies[name], b.cache[name] = true, true
		if b.deleting[name] {
			b.mintDuringDelete.Add(1)
		}
	}
	b.mu.Unlock()
	return b.Backend.Mint(ctx, req)
}

func (b *sharingBackend) Policies(context.Context) ([]string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for p := range b.policies {
		out = append(out, p)
	}
	slices.Sort(out)
	return out, nil
}

func (b *sharingBackend) DeletePolicy(_ context.Context, name string) error {
	b.mu.Lock()
	delete(b.cache, name)
	b.deleting[name] = true
	b.mu.Unlock()
	runtime.Gosched() // let an issue run between forgetting and deleting
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.policies, name)
	delete(b.deleting, name)
	b.deleted.Add(1)
	return nil
}

// newServiceOn is a Service with cfg on a bbolt store of its own whose one
// backend ("fake") is b.
func newServiceOn(t *testing.T, b broker.Backend, cfg broker.Config) (*boltstore.Store, *broker.Service) {
	t.Helper()
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "latch.db"), boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cfg.Store, cfg.Policy, cfg.Backends = st, loadPolicy(t), map[string]broker.Backend{"fake": b}
	svc, err := broker.NewService(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return st, svc
}

// newSharingService is a Service whose one backend shares policies.
func newSharingService(t *testing.T) (*boltstore.Store, *broker.Service, *sharingBackend) {
	b := newSharingBackend()
	st, svc := newServiceOn(t, b, broker.Config{})
	return st, svc, b
}

func (b *sharingBackend) has(name string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.policies[name]
}

// TestPolicies_CollectionNeverRacesAnIssue: issues, releases and policy
// collection run at once; whenever a lease is active, its policy exists,
// and a policy nothing uses is collected.
func TestPolicies_CollectionNeverRacesAnIssue(t *testing.T) {
	ctx := context.Background()
	_, svc, b := newSharingService(t)
	stop := make(chan struct{})
	collected := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				collected <- nil
				return
			default:
			}
			if _, err := svc.Leases().CollectPolicies(ctx); err != nil {
				collected <- err
				return
			}
		}
	}()
	var wg sync.WaitGroup
	var gone atomic.Int64
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			agent := "spiffe://example.org/agent/report-" + string(rune('a'+w))
			for range 40 {
				res, err := svc.Issue(ctx, broker.IssueRequest{Agent: agent, Task: "report", Params: map[string]string{"region": "eu"}, Reason: "race"})
				var e *broker.Error
				if errors.As(err, &e) && e.Code == broker.EUNAVAILABLE {
					continue // collection held the policy past the retries: refused, never broken
				}
				if err != nil {
					t.Errorf("issue: %v", err)
					return
				}
				if !b.has(res.Lease.Refs.Policy) {
					gone.Add(1)
				}
				if err := svc.Leases().Release(ctx, agent, res.Lease.ID); err != nil {
					t.Errorf("release: %v", err)
					return
				}
				if _, err := svc.Leases().ProcessRevocations(ctx); err != nil {
					t.Errorf("revocations: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	if err := <-collected; err != nil {
		t.Fatal(err)
	}
	if n := b.mintDuringDelete.Load(); n > 0 {
		t.Errorf("%d mints wrote a policy while it was being deleted", n)
	}
	if n := gone.Load(); n > 0 {
		t.Fatalf("%d issues returned a lease whose policy was gone", n)
	}
	if b.deleted.Load() == 0 {
		t.Fatal("no policy was collected: the race was not run")
	}
	// Everything released: the last collection leaves no policy behind.
	if _, err := svc.Leases().CollectPolicies(ctx); err != nil {
		t.Fatal(err)
	}
	if left, _ := b.Policies(ctx); len(left) != 0 {
		t.Fatalf("policies left with no lease: %v", left)
	}

}

// TestPolicies_MarkBlocksIntent: while a policy is marked for deletion,
// an issue that names it mints nothing and is told to ask again.
func TestPolicies_MarkBlocksIntent(t *testing.T) {
	ctx := context.Background()
	st, svc, b := newSharingService(t)
	agent := "spiffe://example.org/agent/report-a"
	if _, err := st.Apply(ctx, broker.Change{MarkDeleting: []string{"p-a"}}); err != nil {
		t.Fatal(err)
	}
	_, err := svc.Issue(ctx, broker.IssueRequest{Agent: agent, Task: "report", Params: map[string]string{"region": "eu"}})
	if broker.ErrorCode(err) != broker.EUNAVAILABLE || b.Mints.Load() != 0 {
		t.Fatalf("issue while its policy is marked: %v, %d mints; want unavailable and none", err, b.Mints.Load())
	}
}
