package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/latchbroker/latch/integration/stack"
	"github.com/latchbroker/latch/integration/vaultenv"
)

// fetchOut is `latch fetch -o json`.
type fetchOut struct {
	Lease struct {
		ID    string `json:"id"`
		Agent string `json:"agent"`
	} `json:"lease"`
	Secret   map[string]string `json:"secret"`
	Approval *struct {
		ID string `json:"id"`
	} `json:"approval"`
}

func parseFetch(t testing.TB, r cliResult) fetchOut {
	t.Helper()
	var out fetchOut
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("latch fetch -o json: %v\n%s", err, r)
	}
	return out
}

// TestServer_AgentProcess runs `latch fetch` as an agent process that gets
// its SVIDs from the SPIRE agent's Workload API, as a real agent would.
func TestServer_AgentProcess(t *testing.T) {
	l := startLatch(t)
	e := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Every latch child process has the same path and uid, so this is
	// the only test that registers them: the Workload API hands them this
	// one identity.
	agent := agentPrefix + "process-bot"
	entryID, err := st.SPIRE.Register(ctx, stack.Entry{
		ID:        spiffeid.RequireFromString(agent),
		Selectors: []string{fmt.Sprintf("unix:uid:%d", os.Getuid()), "unix:path:" + latchBin},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.SPIRE.Unregister(context.Background(), entryID) })
	env := []string{"SPIFFE_ENDPOINT_SOCKET=" + st.SPIRE.WorkloadAPIAddr()}

	// run runs fetch until the SPIRE agent has synced the new entry
	// (about 5 s): until then the Workload API has no SVID for it.
	run := func(args ...string) fetchOut {
		t.Helper()
		var r cliResult
		deadline := time.Now().Add(45 * time.Second)
		for {
			r = l.cli(ctx, env, append([]string{"fetch", "-o", "json", "--reason", "agent process test"}, args...)...)
			if r.code == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(time.Second)
		}
		if r.code != 0 {
			t.Fatalf("latch fetch %v: %s", args, r)
		}
		out := parseFetch(t, r)
		if out.Lease.ID == "" || out.Lease.Agent != agent {
			t.Fatalf("latch fetch %v: lease %+v, want one of %s", args, out.Lease, agent)
		}
		return out
	}

	t.Run("X509/PostgreSQL", func(t *testing.T) {
		out := run("--task", "nightly-report", "--param", "region=eu")
		user := out.Secret["username"]
		who, err := e.PGLogin(ctx, user, out.Secret["password"])
		if err != nil || who != user {
			t.Fatalf("PostgreSQL login as %q: %q, %v", user, who, err)
		}
	})
	t.Run("JWT/VaultToken", func(t *testing.T) {
		out := run("--jwt", "--task", "close-ticket", "--param", "ticket=43")
		vc, err := e.ClientWithToken(out.Secret["token"])
		if err != nil {
			t.Fatal(err)
		}
		s, err := vc.KVv2("secret").Get(ctx, "tickets/43")
		if err != nil || s.Data["body"] != "ticket 43" {
			t.Fatalf("read tickets/43 = %v, %v", s, err)
		}
		if _, err := vc.KVv2("secret").Get(ctx, "tickets/42"); vaultenv.StatusOf(err) != http.StatusForbidden {
			t.Fatalf("read tickets/42 = %v, want 403", err)
		}
	})
}
