package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/boltstore"
)

// The kill -9 tests run latch (crashchild, built with -tags failpoints) in
// a child process, let it SIGKILL itself at a failpoint, start it again
// without the failpoint, and check that store and Vault agree afterwards
// (invariant 3).

var (
	childOnce sync.Once
	childBin  string
	childErr  error
)

// crashChild builds crashchild with the failpoints compiled in, once.
func crashChild(t *testing.T) string {
	t.Helper()
	childOnce.Do(func() {
		goBin, err := exec.LookPath("go")
		if err != nil {
			childErr = fmt.Errorf("the go command is needed to build crashchild: %w", err)
			return
		}
		childBin = filepath.Join(st.Dir, "crashchild")
		start := time.Now()
		args := []string{"build", "-tags", "failpoints", "-o", childBin}
		if raceEnabled {
			args = append(args, "-race")
		}
		cmd := exec.Command(goBin, append(args, "./crashchild")...)
		if out, err := cmd.CombinedOutput(); err != nil {
			childErr = fmt.Errorf("go %s ./crashchild: %v\n%s", strings.Join(args, " "), err, out)
			return
		}
		fmt.Fprintf(os.Stderr, "built crashchild with failpoints in %s\n", time.Since(start).Round(time.Millisecond))
	})
	if childErr != nil {
		t.Fatal(childErr)
	}
	return childBin
}

// child is one latch installation: a config (and bbolt file) the child
// process is started on, again and again.
type child struct {
	bin, cfg, db string
}

func newChild(t *testing.T, e *env) *child {
	t.Helper()
	dir := t.TempDir()
	c := &child{bin: crashChild(t), cfg: filepath.Join(dir, "config.json"), db: filepath.Join(dir, "latch.db")}
	cfg := map[string]any{
		"db":             c.db,
		"vault_addr":     st.Vault.Addr,
		"role_id_file":   e.RoleIDFile,
		"secret_id_file": e.SecretIDFile,
		"policy":         policyYAML,
		"templates":      templateFiles,
		"backends":       backendsYAML,
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.cfg, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return c
}

// run starts the child with args and failpoint (LATCH_FAILPOINT; "" for
// none) and waits for it. With a failpoint it must die of SIGKILL,
// without one exit cleanly. It returns the leases the child printed.
func (c *child) run(t *testing.T, failpoint string, args ...string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, append([]string{"-config", c.cfg}, args...)...)
	cmd.Env = append(os.Environ(), "LATCH_FAILPOINT="+failpoint)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start).Round(time.Millisecond)
	var ee *exec.ExitError
	killed := errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signaled() && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL
	switch {
	case failpoint != "" && !killed:
		t.Fatalf("crashchild %v with LATCH_FAILPOINT=%s was not killed (%v) after %s\nstderr:\n%s", args, failpoint, err, took, stderr.String())
	case failpoint == "" && err != nil:
		t.Fatalf("crashchild %v: %v after %s\nstderr:\n%s", args, err, took, stderr.String())
	}
	if failpoint != "" {
		t.Logf("crashchild %s: killed at %s after %s", args[1], failpoint, took)
	} else {
		t.Logf("crashchild %s: done in %s", args[1], took)
	}
	var leases []string
	dec := json.NewDecoder(&stdout)
	for {
		var line struct{ Lease string }
		if err := dec.Decode(&line); err != nil {
			break
		}
		leases = append(leases, line.Lease)
	}
	return leases
}

// store opens the child's bbolt file read-only, while the child is not
// running, for the test to inspect.
func (c *child) store(t *testing.T) *boltstore.Store {
	t.Helper()
	s, err := boltstore.Open(c.db, boltstore.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestCrash_Issue kills latch at each point of an issue, for each backend
// type: after the intent is stored (nothing exists in Vault yet), after
// Prepare's refs are stored and right before Mint (the mint token exists),
// and after Mint, before the lease is committed (the secret exists in
// Vault, latch has no lease for it). The restart must leave no Vault
// object without a lease, and no lease without its Vault object.
func TestCrash_Issue(t *testing.T) {
	e := setup(t)
	cases := []struct {
		failpoint, region string
	}{
		{"issue-after-intent", "c"},
		{"issue-before-mint", "d"},
		{"issue-after-mint", "e"},
	}
	for _, tc := range cases {
		t.Run(tc.failpoint, func(t *testing.T) {
			ctx := t.Context()
			start := time.Now()
			agent := agentPrefix + "crash-" + tc.failpoint
			service := "crash-" + tc.region
			sc := scope{agent: agent, region: tc.region, cn: service + ".svc.example.org", since: start}
			reqs := []string{
				taskToken + " ticket=42",
				taskDB + " region=" + tc.region,
				taskCert + " service=" + service,
			}
			c := newChild(t, e)

			// Leases committed before the crash must survive it intact.
			var args []string
			for _, r := range reqs {
				args = append(args, "-req", r)
			}
			survivors := c.run(t, "", append([]string{"-op", "issue", "-agent", agent}, args...)...)
			if len(survivors) != 3 {
				t.Fatalf("issued %v", survivors)
			}
			for _, r := range reqs {
				c.run(t, tc.failpoint, "-op", "issue", "-agent", agent, "-req", r)
			}

			// What the crashes left: three intents, and in Vault what the
			// failpoint says.
			s := c.store(t)
			intents, err := s.Intents(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(intents) != 3 {
				t.Fatalf("%d intents after 3 crashes", len(intents))
			}
			crashed := map[string]*broker.Lease{}
			for _, in := range intents {
				crashed[in.ID] = in
				alive, err := e.backends[in.Backend].Lookup(ctx, in.Refs)
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("%s intent %s: refs %+v, alive in Vault: %v", in.Task, in.ID, in.Refs, alive)
				switch tc.failpoint {
				case "issue-after-intent":
					// vault-token and vault-lease name their group (and
					// vault-token its shared policy) before the intent
					// (broker.Namer); vault-pki learns refs from Vault.
					want := broker.Refs{Policy: in.Refs.Policy, Group: in.Refs.Group}
					named := in.Backend != "certs"
					if in.Refs != want || named != (in.Refs.Group != "") || (in.Backend == "tokens") != (in.Refs.Policy != "") {
						t.Errorf("intent %s has refs before the backend was called: %+v", in.ID, in.Refs)
					}
				case "issue-before-mint":
					if in.Refs.IsZero() {
						t.Errorf("intent %s has no refs", in.ID)
					}
					if want := in.Backend == "certs"; alive != want { // vault-pki's mint token exists
						t.Errorf("%s intent %s: alive=%v before Mint, want %v", in.Task, in.ID, alive, want)
					}
				case "issue-after-mint":
					// vault-token and vault-lease intents name the group:
					// whether their credential lives cannot be told from it.
					if !alive && in.Backend == "certs" {
						t.Errorf("%s intent %s: nothing alive in Vault after Mint", in.Task, in.ID)
					}
				}
			}
			if tc.failpoint == "issue-after-mint" {
				// The secrets exist, and latch has no lease for them:
				// exactly what reconciliation must clean up.
				if err := func() error { _, err := e.consistent(ctx, s, sc); return err }(); err == nil {
					t.Fatal("store and Vault agree before reconciliation: the crash left nothing to clean up")
				}
			}
			s.Close()

			c.run(t, "", "-op", "reconcile")

			s = c.store(t)
			evs := events(t, s)
			for id, in := range crashed {
				l, err := s.Lease(ctx, id)
				if err != nil {
					t.Fatalf("crashed lease %s: %v", id, err)
				}
				want, wantEvents := broker.StateRevoked, []broker.EventType{broker.EventReconcile, broker.EventRevoked}
				if in.Refs.IsZero() {
					want, wantEvents = broker.StateFailed, []broker.EventType{broker.EventReconcile}
				}
				if l.State != want {
					t.Errorf("crashed %s lease %s is %s, want %s", l.Task, id, l.State, want)
				}
				if got := eventsOf(evs, id); !slices.Equal(got, wantEvents) {
					t.Errorf("crashed lease %s: audit events %v, want %v", id, got, wantEvents)
				}
			}
			for _, id := range survivors {
				if l, err := s.Lease(ctx, id); err != nil || l.State != broker.StateActive {
					t.Errorf("lease %s committed before the crash: %v, %v", id, l, err)
				}
			}
			e.assertConsistent(t, s, sc)
			if res, err := boltstore.VerifyAudit(c.db, nil); err != nil || !res.OK() {
				t.Errorf("audit chain after the crashes: %+v, %v", res, err)
			}
		})
	}
}

// TestCrash_BulkRevoke kills latch in the middle of revoking everything:
// after Vault confirmed the second revocation and before latch recorded it,
// with more in flight. The restart must finish every queued revocation,
// each recorded once.
func TestCrash_BulkRevoke(t *testing.T) {
	e := setup(t)
	ctx := t.Context()
	start := time.Now()
	agent := agentPrefix + "crash-bulk-bot"
	const region, service = "i", "crash-bulk"
	sc := scope{agent: agent, region: region, cn: service + ".svc.example.org", since: start}
	c := newChild(t, e)

	args := []string{"-op", "issue", "-agent", agent}
	for i := range 24 {
		args = append(args, "-req", fmt.Sprintf("%s ticket=%d", taskToken, 42+i%2))
	}
	for range 3 {
		args = append(args, "-req", taskDB+" region="+region, "-req", taskCert+" service="+service)
	}
	issued := c.run(t, "", args...)
	if len(issued) != 30 {
		t.Fatalf("issued %d leases", len(issued))
	}

	// The 24 tokens are one group, the 3 database leases another: five
	// confirmations in all, recorded by group; kill at the second.
	c.run(t, "revoke-after-backend@2", "-op", "revoke-all")

	s := c.store(t)
	states := map[broker.LeaseState]int{}
	unrecorded := 0 // revoked in Vault, not yet in the store (active: its group's revocation was not recorded)
	for _, id := range issued {
		l, err := s.Lease(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		states[l.State]++
		if l.State == broker.StateRevoking || l.State == broker.StateActive {
			alive, err := e.backends[l.Backend].Lookup(ctx, l.Refs)
			if err != nil {
				t.Fatal(err)
			}
			if !alive {
				unrecorded++
			}
		}
	}
	depth, err := s.QueueDepth(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after the kill: %v, %d queued, %d revoked in Vault but not recorded", states, depth, unrecorded)
	if states[broker.StateRevoked] == len(issued) || depth == 0 || unrecorded == 0 {
		t.Fatalf("the kill did not land in the middle of the bulk revocation: %v, %d queued, %d unrecorded", states, depth, unrecorded)
	}
	s.Close()

	c.run(t, "", "-op", "reconcile")

	s = c.store(t)
	evs := events(t, s)
	for _, id := range issued {
		l, err := s.Lease(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if l.State != broker.StateRevoked {
			t.Errorf("lease %s is %s", id, l.State)
		}
		checkRevokedTrail(t, evs, l)
	}
	e.assertConsistent(t, s, sc)
	if toks, err := e.LatchTokens(ctx, agent); err != nil || len(toks) != 0 {
		t.Errorf("tokens of %s left in Vault: %v (%v)", agent, toks, err)
	}
	if res, err := boltstore.VerifyAudit(c.db, nil); err != nil || !res.OK() {
		t.Errorf("audit chain after the crash: %+v, %v", res, err)
	}
}
