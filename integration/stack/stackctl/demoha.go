package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/latchbroker/latch/integration/stack"
	"github.com/latchbroker/latch/integration/vaultenv"
)

// runDemoHA runs two latch replicas on the 3-member etcd cluster: the
// agent gets credentials through the first, which is then killed (-9);
// it goes on through the second, which takes the duties over and revokes
// what the first issued; the chain in etcd verifies.
func runDemoHA(ctx context.Context, st *stack.Stack, latchBin string) error {
	step("Vault: engines, latch's minimal policy from the README, an AppRole for latch")
	env, err := vaultenv.Setup(ctx, st, vaultenv.Options{DBRoles: []string{"report-eu", "report-us"}})
	if err != nil {
		return err
	}
	store := fmt.Sprintf(`{ etcd: { endpoints: ["%s"], prefix: /latch-demo } }`, strings.Join(st.Etcd.Endpoints(), `", "`))
	var replicas [2]*demo
	for i := range replicas {
		d := &demo{st: st, latch: latchBin, dir: filepath.Join(st.Dir, fmt.Sprintf("latch-ha-%d", i+1))}
		if err := os.MkdirAll(filepath.Join(d.dir, "templates"), 0o700); err != nil {
			return err
		}
		if err := d.writeIdentity(ctx); err != nil {
			return err
		}
		if err := d.writeConfig(env, store); err != nil {
			return err
		}
		replicas[i] = d
	}
	first, second := replicas[0], replicas[1]
	step("Two replicas on one etcd prefix, " + store)
	s1, err := first.startServer(ctx)
	if err != nil {
		return err
	}
	defer first.stopServer(s1)
	s2, err := second.startServer(ctx)
	if err != nil {
		return err
	}
	defer second.stopServer(s2)

	step("The agent fetches a Vault token through replica 1")
	if _, err := first.run(append([]string{"fetch", "--task", "close-ticket", "--param", "ticket=42", "--reason", "through replica 1"}, first.agentFlags...)...); err != nil {
		return err
	}
	step("kill -9 replica 1 (it runs the background duties)")
	_ = s1.Process.Kill()
	_ = s1.Wait()
	step("The agent keeps getting credentials, through replica 2")
	if _, err := second.run(append([]string{"fetch", "--task", "nightly-report", "--param", "region=eu", "--reason", "through replica 2"}, second.agentFlags...)...); err != nil {
		return err
	}
	step("The operator revokes everything the agent holds through replica 2, which takes the duties over within 10 s")
	admin := []string{"--admin-socket", second.sock}
	if _, err := second.run(append([]string{"revoke", "--agent", "spiffe://example.org/agent/report-bot", "--reason", "demo over", "--yes"}, admin...)...); err != nil {
		return err
	}
	if err := second.awaitLog(ctx, "elected to run the background duties", 30*time.Second); err != nil {
		return err
	}
	fmt.Println("  replica 2 was elected to run the duties")
	time.Sleep(2 * time.Second) // the revocation queue works in the background
	if _, err := second.run(append([]string{"lease", "list"}, admin...)...); err != nil {
		return err
	}
	step("The one audit chain, in etcd, verifies while replica 2 serves")
	_, err = second.run("audit", "verify", "--config", filepath.Join(second.dir, "latch.yaml"))
	return err
}

// awaitLog waits until the server's log holds s.
func (d *demo) awaitLog(ctx context.Context, s string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if log, _ := os.ReadFile(filepath.Join(d.dir, "server.log")); strings.Contains(string(log), s) {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("the server's log does not say %q after %v", s, within)
}
