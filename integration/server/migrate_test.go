package server

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/boltstore"
	"github.com/latchbroker/latch/broker/etcdstore"
	"github.com/latchbroker/latch/broker/storetest"
)

// migrateLeases is how many leases TestStore_Migrate copies;
// LATCH_MIGRATE_LEASES sets another number (the issue's 100,000).
func migrateLeases(t *testing.T) int {
	n := 10_000
	if v := os.Getenv("LATCH_MIGRATE_LEASES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			t.Fatalf("LATCH_MIGRATE_LEASES=%q: %v", v, err)
		}
	}
	return n
}

// TestStore_Migrate: latch store migrate copies a bbolt file with
// thousands of leases, intents, queued revocations, agents, approvals,
// grants, marks and the audit chain into an empty etcd prefix: every read
// of the etcd store answers as the bbolt one did, and the chain verifies
// there. It refuses a file a server holds and a prefix that is not empty.
func TestStore_Migrate(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	l := &latch{t: t, dir: t.TempDir()}
	file := filepath.Join(l.dir, "latch.db")
	src, err := boltstore.Open(file, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	n := migrateLeases(t)
	fillStore(t, src, n)
	prefix := fmt.Sprintf("/latch-migrate/%d", time.Now().UnixNano())
	migrate := func() cliResult {
		return l.cli(ctx, nil, "store", "migrate", "--from", "bolt:"+file, "--to", "etcd:"+strings.Join(st.Etcd.Endpoints(), ","), "--prefix", prefix)
	}
	if r := migrate(); r.code == 0 || !strings.Contains(r.stderr, "stop it first") {
		t.Fatalf("migrate from a file a server holds: %s", r)
	}
	src.Close()
	// A pruned log goes with its anchor (latch audit prune checks the
	// export first; here the records are only test data).
	if err := boltstore.PruneAudit(file, 100); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	r := migrate()
	if r.code != 0 || !strings.Contains(r.stdout, fmt.Sprintf("copied %d leases", n)) || !strings.Contains(r.stdout, "chain intact") ||
		!strings.Contains(r.stdout, "from record 101") {
		t.Fatalf("latch store migrate: %s", r)
	}
	t.Logf("migrated %d leases in %v:\n%s", n, time.Since(started).Round(100*time.Millisecond), r.stdout)
	if r := migrate(); r.code == 0 || !strings.Contains(r.stderr, "not empty") {
		t.Fatalf("migrate into a prefix that is not empty: %s", r)
	}

	src, err = boltstore.Open(file, boltstore.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	cli, err := st.Etcd.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	dst, err := etcdstore.New(cli, prefix, etcdstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	sameReads(ctx, t, src, dst)
}

// fillStore writes n leases (in every state, some with a request ID),
// their events, and a few of everything else.
func fillStore(t *testing.T, s broker.Store, n int) {
	g := storetest.NewIDs()
	states := []broker.LeaseState{broker.StateActive, broker.StateRevoked, broker.StateExpired, broker.StateRevoking, broker.StateFailed}
	for start := 0; start < n; start += 1000 {
		var c broker.Change
		for i := start; i < min(n, start+1000); i++ {
			l := storetest.Lease(g.Next(), fmt.Sprintf("spiffe://example.org/agent/%d", i%50), fmt.Sprint("task-", i%7), states[i%len(states)], storetest.T0.Add(time.Duration(i)*time.Second))
			if i%3 == 0 {
				l.RequestID = fmt.Sprint("req-", i)
			}
			if l.State == broker.StateRevoking {
				c.Enqueue = append(c.Enqueue, broker.Revocation{LeaseID: l.ID, Reason: "queued", Actor: "latch", NextAttempt: storetest.T0})
			}
			c.PutLeases = append(c.PutLeases, l)
			c.Events = append(c.Events, storetest.Ev(broker.EventIssue, l.ID))
		}
		storetest.Apply(t, s, c)
	}
	pending := storetest.Lease(g.Next(), "spiffe://example.org/agent/1", "task-1", broker.StatePending, storetest.T0.Add(time.Hour))
	storetest.Apply(t, s, broker.Change{
		PutIntents:   []*broker.Lease{pending},
		AgentStates:  []broker.AgentRecord{{ID: "spiffe://example.org/agent/2", State: broker.AgentPaused, Reason: "checked", Actor: "ops", ChangedAt: storetest.T0}},
		Uses:         []broker.Use{{Agent: "spiffe://example.org/agent/3", Template: "task-3", At: storetest.T0}},
		Freeze:       &broker.FreezeState{Active: true, Reason: "incident", Actor: "ops", Since: storetest.T0},
		PutApprovals: []*broker.Approval{storetest.Approval(g.Next(), "spiffe://example.org/agent/4", "ap-1", broker.ApprovalPending, storetest.T0.Add(time.Hour))},
		Grants:       []broker.Grant{{Agent: "spiffe://example.org/agent/*", Template: "task-1", Since: storetest.T0}},
		RetireGroups: []broker.RetiredGroup{{Group: "g-1", Backend: "tokens"}},
		MarkDeleting: []string{"latch-p-unused"},
		Events:       []broker.Event{storetest.Ev(broker.EventFreeze, "")},
	})
}

// sameReads compares what the two stores answer, read by read.
func sameReads(ctx context.Context, t *testing.T, a, b broker.Store) {
	t.Helper()
	far := time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)
	reads := map[string]func(broker.Store) (any, error){
		"leases": func(s broker.Store) (any, error) { return s.Leases(ctx, broker.LeaseFilter{}) },
		"leases of one": func(s broker.Store) (any, error) {
			return s.Leases(ctx, broker.LeaseFilter{Agent: "spiffe://example.org/agent/7"})
		},
		"active": func(s broker.Store) (any, error) { return s.Leases(ctx, broker.LeaseFilter{State: broker.StateActive}) },
		"by request": func(s broker.Store) (any, error) {
			return s.LeaseByRequest(ctx, "spiffe://example.org/agent/3", "req-3")
		},
		"count":     func(s broker.Store) (any, error) { return s.CountByTask(ctx, broker.StateActive) },
		"expiring":  func(s broker.Store) (any, error) { return s.ExpiringBefore(ctx, far, 100) },
		"intents":   func(s broker.Store) (any, error) { return s.Intents(ctx) },
		"queue":     func(s broker.Store) (any, error) { return s.DueRevocations(ctx, far, 0) },
		"agents":    func(s broker.Store) (any, error) { return s.Agents(ctx) },
		"freeze":    func(s broker.Store) (any, error) { return s.Freeze(ctx) },
		"approvals": func(s broker.Store) (any, error) { return s.Approvals(ctx, broker.ApprovalFilter{}) },
		"approval ix": func(s broker.Store) (any, error) {
			return s.ApprovalByRequest(ctx, "spiffe://example.org/agent/4", "ap-1")
		},
		"grants":     func(s broker.Store) (any, error) { return s.Grants(ctx) },
		"retired":    func(s broker.Store) (any, error) { return s.RetiredGroups(ctx) },
		"policy use": func(s broker.Store) (any, error) { return s.PolicyUse(ctx) },
		"last event": func(s broker.Store) (any, error) { return s.LastEvent(ctx) },
	}
	for name, read := range reads {
		x, errA := read(a)
		y, errB := read(b)
		if errA != nil || errB != nil {
			t.Fatalf("%s: bbolt %v, etcd %v", name, errA, errB)
		}
		if jx, jy := asJSON(x), asJSON(y); !reflect.DeepEqual(jx, jy) {
			t.Fatalf("%s differs:\nbbolt %.600s\netcd  %.600s", name, jx, jy)
		}
	}
}

// asJSON is v as JSON: times and maps compare by what they say.
func asJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
