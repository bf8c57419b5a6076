package main

// The demo's second half: a freeze window, two people approving a
// critical request, an MCP session whose model never sees the database
// password, and a quarantine that kills a running command's credential.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/latchbroker/latch/broker/brokertest"
)

// writeSVIDs mints X.509-SVIDs for pairs of name, SPIFFE ID, as
// NAME-svid.pem and NAME-key.pem.
func (d *demo) writeSVIDs(ctx context.Context, pairs ...string) error {
	for i := 0; i < len(pairs); i += 2 {
		svid, err := d.st.SPIRE.MintX509SVID(ctx, spiffeid.RequireFromString(pairs[i+1]), time.Hour)
		if err != nil {
			return err
		}
		for name, b := range map[string][]byte{pairs[i] + "-svid.pem": svid.CertPEM, pairs[i] + "-key.pem": svid.KeyPEM} {
			if err := os.WriteFile(filepath.Join(d.dir, name), b, 0o600); err != nil {
				return err
			}
		}
	}
	return nil
}

// as is the CLI's identity flags for a name writeSVIDs wrote.
func (d *demo) as(name string) []string {
	return []string{"--addr", "https://" + d.api, "--cert", filepath.Join(d.dir, name+"-svid.pem"), "--key", filepath.Join(d.dir, name+"-key.pem"),
		"--bundle", filepath.Join(d.dir, "bundle.pem")}
}

func (d *demo) story(ctx context.Context) error {
	step("A freeze window: deploy is denied during maintenance, and the denial says when it is allowed again")
	if out, err := d.run(append([]string{"fetch", "--task", "deploy", "--reason", "ship 1.2"}, d.agentFlags...)...); err == nil || !strings.Contains(out, "maintenance") {
		return fmt.Errorf("deploy during the maintenance window was not denied by it: %v", err)
	}
	if err := d.criticalApproval(); err != nil {
		return err
	}
	if err := d.mcpSession(ctx); err != nil {
		return err
	}
	return d.quarantineMidExec()
}

var approvalID = regexp.MustCompile(`approval required: ([0-9A-Z]{26})`)

// criticalApproval: the agent waits in fetch --wait; alice and carol
// approve; the agent gets its token.
func (d *demo) criticalApproval() error {
	step("A critical request: the agent waits in latch fetch --wait while two people approve it")
	fmt.Println("$ latch fetch --task payment --param ticket=42 --reason 'pay invoice 42' --wait 60s &")
	cmd := exec.Command(d.latch, append([]string{"fetch", "--task", "payment", "--param", "ticket=42", "--reason", "pay invoice 42",
		"--wait", "60s", "-o", "json"}, d.agentFlags...)...)
	cmd.Env = append(os.Environ(), "SPIFFE_ENDPOINT_SOCKET=")
	var stdout, stderr brokertest.SyncBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	defer cmd.Process.Kill()
	var id string
	for deadline := time.Now().Add(20 * time.Second); id == ""; time.Sleep(100 * time.Millisecond) {
		if m := approvalID.FindStringSubmatch(stderr.String()); m != nil {
			id = m[1]
		} else if time.Now().After(deadline) {
			return fmt.Errorf("latch fetch --wait named no approval:\n%s", stderr.String())
		}
	}
	fmt.Print(indent(strings.TrimSpace(approvalID.FindString(stderr.String()))))
	for _, who := range []string{"alice", "carol"} {
		if _, err := d.run(append([]string{"approval", "approve", id, "--reason", who + " checked the invoice"}, d.as(who)...)...); err != nil {
			return err
		}
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("latch fetch --wait: %v\n%s", err, stderr.String())
	}
	var got struct {
		Lease  struct{ ID string } `json:"lease"`
		Secret map[string]string   `json:"secret"`
	}
	if err := json.Unmarshal([]byte(stdout.String()), &got); err != nil || got.Secret["token"] == "" {
		return fmt.Errorf("latch fetch --wait's output: %v", err)
	}
	fmt.Printf("  the agent's fetch returned lease %s with a token (not shown), approved by alice and carol\n", got.Lease.ID)
	return nil
}

// mcpSession: a scripted MCP client, standing in for the model, lists
// the tasks and runs a query with a database login it never sees.
func (d *demo) mcpSession(ctx context.Context) error {
	step("An MCP session: a scripted client (the model's stand-in) lists its tasks and runs a query with a database login it never sees")
	psql, err := exec.LookPath("psql")
	if err != nil {
		return err
	}
	cfg := fmt.Sprintf(`tasks:
  nightly-report:
    commands:
      query:
        description: One query on the report database.
        run: [%s, -X, -At, -c]
        args: [ { name: query, pattern: "^SELECT [a-z_, +0-9]+$" } ]
        env: { PGUSER: username, PGPASSWORD: password }
        set_env: { PGHOST: %s, PGPORT: "%d", PGDATABASE: postgres }
`, psql, d.st.Postgres.Host, d.st.Postgres.Port)
	path := filepath.Join(d.dir, "mcp.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return err
	}
	fmt.Println("$ latch mcp --config mcp.yaml --cert mcp-bot-svid.pem …   (the MCP client runs it over stdio)")
	server := exec.Command(d.latch, append([]string{"mcp", "--config", path}, d.as("mcp-bot")...)...)
	server.Env = append(os.Environ(), "SPIFFE_ENDPOINT_SOCKET=")
	var wire bytes.Buffer
	client := sdk.NewClient(&sdk.Implementation{Name: "demo-model", Version: "1"}, nil)
	session, err := client.Connect(ctx, &sdk.LoggingTransport{Transport: &sdk.CommandTransport{Command: server}, Writer: &wire}, nil)
	if err != nil {
		return err
	}
	defer session.Close()
	res, err := session.CallTool(ctx, &sdk.CallToolParams{Name: "list_tasks", Arguments: map[string]any{}})
	if err != nil {
		return err
	}
	tasks, _ := json.Marshal(res.StructuredContent)
	fmt.Printf("  list_tasks → %s\n", tasks)
	res, err = session.CallTool(ctx, &sdk.CallToolParams{Name: "run_with_credential", Arguments: map[string]any{
		"task": "nightly-report", "params": map[string]string{"region": "eu"}, "reason": "total for the report",
		"command": "query", "args": []string{"SELECT current_user, 40 + 2"}}})
	if err != nil || res.IsError {
		return fmt.Errorf("run_with_credential: %v %v", err, res)
	}
	out, _ := json.Marshal(res.StructuredContent)
	fmt.Printf("  run_with_credential → %s\n  (current_user is the minted login: redacted; the lease ended with the command)\n", out)
	return nil
}

// quarantineMidExec: a command under latch exec reads a ticket every
// half second; the operator quarantines the agent; the next read fails.
func (d *demo) quarantineMidExec() error {
	step("A quarantine in the middle of a running latch exec: the command's token dies at once")
	vaultBin := filepath.Join(filepath.Dir(mustTool("vault")), "vault")
	script := fmt.Sprintf(`export VAULT_ADDR=%s VAULT_TOKEN="$LATCH_TOKEN"
touch %s/exec-started
while %s kv get -field=body secret/tickets/42 >/dev/null 2>&1; do sleep 0.5; done
echo "  the command: reading ticket 42 failed: its token was revoked"`, d.st.Vault.Addr, d.dir, vaultBin)
	fmt.Println("$ latch exec --task close-ticket --param ticket=42 -- sh -c 'read ticket 42 every 0.5 s until it fails' &")
	cmd := exec.Command(d.latch, append(append([]string{"exec", "--task", "close-ticket", "--param", "ticket=42", "--reason", "watch ticket 42"},
		d.agentFlags...), "--", "sh", "-c", script)...)
	cmd.Env = append(os.Environ(), "SPIFFE_ENDPOINT_SOCKET=")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	defer cmd.Process.Kill()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(d.dir, "exec-started")); err == nil {
			break
		} else if time.Now().After(deadline) {
			return fmt.Errorf("the command under latch exec did not start")
		}
	}
	start := time.Now()
	if _, err := d.run("agent", "quarantine", "spiffe://example.org/agent/report-bot", "--reason", "it touched the wrong ticket", "--admin-socket", d.sock); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
		fmt.Printf("  the command ended %s after the quarantine\n", time.Since(start).Round(100*time.Millisecond))
	case <-time.After(30 * time.Second):
		return fmt.Errorf("the command under latch exec kept its token for 30 s after the quarantine")
	}
	return nil
}
