package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/latchbroker/latch/integration/stack"
	"github.com/latchbroker/latch/integration/vaultenv"
)

// demo runs latch's main job on the stack: Vault set up with latch's
// minimal policy, latch server with its SVID from SPIRE, and an agent that
// fetches a database login and a Vault token scoped to one ticket, is
// denied a parameter out of bounds, and has its leases revoked.
type demo struct {
	st                 *stack.Stack
	latch, dir         string
	api, metrics, sock string
	agentFlags         []string
}

const demoConfig = `server: { listen: %s, id: spiffe://example.org/latch, admin_socket: %s, metrics_listen: %s }
spiffe: { svid_cert: latch-svid.pem, svid_key: latch-key.pem, bundle: bundle.json }
store: %s
vault: { address: %s, auth: { method: approle, role_id_file: %s, secret_id_file: %s } }
backends:
  tokens: { type: vault-token }
  app-db: { type: vault-lease, path: "database/creds/{{ .vars.role }}" }
operators:
  - { id: spiffe://example.org/ops/alice, roles: [approver] }
  - { id: spiffe://example.org/ops/carol, roles: [approver] }
agents:
  - id: spiffe://example.org/agent/report-bot
    owner: spiffe://example.org/ops/bob
    templates: [nightly-report, close-ticket, deploy, payment]
  - id: spiffe://example.org/agent/mcp-bot
    owner: spiffe://example.org/ops/bob
    templates: [nightly-report]
freeze_windows:
  maintenance: { from: "%s", until: "%s" }
templates_dir: templates
`

var demoTemplates = map[string]string{
	"nightly-report.yaml": `name: nightly-report
description: Read one region's sales tables for the nightly report.
backend: app-db
params:
  region: { enum: [eu, us] }
vars: { role: "report-{{ .params.region }}" }
ttl: 10m
max_ttl: 30m
risk: low
`,
	"close-ticket.yaml": `name: close-ticket
description: Read and update one ticket's secrets.
backend: tokens
params:
  ticket: { pattern: "^[0-9]{1,9}$" }
policy: |
  path "secret/data/tickets/{{ .params.ticket }}" { capabilities = ["read", "update"] }
ttl: 5m
max_ttl: 15m
risk: low
`,
	"deploy.yaml": `name: deploy
description: Read the deploy key; never during maintenance.
backend: tokens
policy: |
  path "secret/data/deploy" { capabilities = ["read"] }
ttl: 5m
risk: low
windows:
  - { window: maintenance, effect: deny }
`,
	"payment.yaml": `name: payment
description: Pay one invoice from a ticket's account; two people approve.
backend: tokens
params:
  ticket: { pattern: "^[0-9]{1,9}$" }
policy: |
  path "secret/data/tickets/{{ .params.ticket }}" { capabilities = ["read"] }
ttl: 5m
risk: critical
`,
}

func runDemo(ctx context.Context, st *stack.Stack, latchBin string) error {
	d := &demo{st: st, latch: latchBin, dir: filepath.Join(st.Dir, "latch-demo")}
	if err := os.MkdirAll(filepath.Join(d.dir, "templates"), 0o700); err != nil {
		return err
	}
	step("Vault: engines, latch's minimal policy from the README, an AppRole for latch")
	env, err := vaultenv.Setup(ctx, st, vaultenv.Options{DBRoles: []string{"report-eu", "report-us"}})
	if err != nil {
		return err
	}
	step("SPIRE: SVIDs for latch (spiffe://example.org/latch) and the agent (spiffe://example.org/agent/report-bot)")
	if err := d.writeIdentity(ctx); err != nil {
		return err
	}
	if err := d.writeConfig(env, "{ path: latch.db }"); err != nil {
		return err
	}
	server, err := d.startServer(ctx)
	if err != nil {
		return err
	}
	defer d.stopServer(server)

	step("The agent fetches a PostgreSQL login for the EU report, and uses it")
	out, err := d.run(append([]string{"fetch", "--task", "nightly-report", "--param", "region=eu", "--reason", "nightly sales report", "-o", "json"}, d.agentFlags...)...)
	if err != nil {
		return err
	}
	var fetched struct {
		Lease struct {
			ID        string `json:"id"`
			ExpiresAt string `json:"expires_at"`
		} `json:"lease"`
		Secret map[string]string `json:"secret"`
	}
	if err := json.Unmarshal([]byte(out), &fetched); err != nil {
		return fmt.Errorf("fetch output: %w", err)
	}
	fmt.Printf("  lease %s until %s; secret fields: username, password (not shown)\n", fetched.Lease.ID, fetched.Lease.ExpiresAt)
	conn, err := pgx.Connect(ctx, st.Postgres.URL(fetched.Secret["username"], fetched.Secret["password"]))
	if err != nil {
		return fmt.Errorf("log in with the fetched credentials: %w", err)
	}
	var who string
	err = conn.QueryRow(ctx, "SELECT current_user").Scan(&who)
	conn.Close(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("  PostgreSQL says: current_user = %s\n", who)

	step("The agent runs a command with a Vault token that can read ticket 42 — and nothing else")
	vaultBin := filepath.Join(filepath.Dir(mustTool("vault")), "vault")
	script := fmt.Sprintf(`export VAULT_ADDR=%s VAULT_TOKEN="$LATCH_TOKEN"
echo "  ticket 42: $(%s kv get -field=body secret/tickets/42)"
%s kv get secret/tickets/43 >/dev/null 2>&1 && echo "  ticket 43: readable (wrong!)" || echo "  ticket 43: permission denied, as it should be"`,
		st.Vault.Addr, vaultBin, vaultBin)
	if _, err := d.run(append(append([]string{"exec", "--task", "close-ticket", "--param", "ticket=42", "--reason", "close ticket 42"}, d.agentFlags...), "--", "sh", "-c", script)...); err != nil {
		return err
	}

	step("A parameter out of bounds is denied, with the reason")
	if _, err := d.run(append([]string{"fetch", "--task", "nightly-report", "--param", "region=mars", "--reason", "exploring"}, d.agentFlags...)...); err == nil {
		return errors.New("a request for region=mars was not denied")
	}

	admin := []string{"--admin-socket", d.sock}
	step("The operator lists leases and revokes everything the agent holds (admin socket)")
	if _, err := d.run(append([]string{"lease", "list"}, admin...)...); err != nil {
		return err
	}
	if _, err := d.run(append([]string{"revoke", "--agent", "spiffe://example.org/agent/report-bot", "--reason", "demo over", "--yes"}, admin...)...); err != nil {
		return err
	}
	time.Sleep(2 * time.Second) // the revocation queue works in the background
	if _, err := d.run(append([]string{"audit", "tail", "-n", "12"}, admin...)...); err != nil {
		return err
	}
	step("The grants inventory: who may use what, and when it was last used")
	if _, err := d.run(append([]string{"report"}, admin...)...); err != nil {
		return err
	}
	if err := d.story(ctx); err != nil {
		return err
	}
	d.stopServer(server)
	step("The audit chain verifies offline")
	_, err = d.run("audit", "verify", "--db", filepath.Join(d.dir, "latch.db"))
	return err
}

func step(s string) { fmt.Printf("\n== %s\n", s) }

func mustTool(name string) string {
	dir := os.Getenv("LATCH_TOOLS_BIN")
	if dir == "" {
		dir = ".tools/bin"
	}
	return filepath.Join(dir, name)
}

func (d *demo) writeIdentity(ctx context.Context) error {
	latchSVID, err := d.st.SPIRE.MintX509SVID(ctx, spiffeid.RequireFromString("spiffe://example.org/latch"), time.Hour)
	if err != nil {
		return err
	}
	agentSVID, err := d.st.SPIRE.MintX509SVID(ctx, spiffeid.RequireFromString("spiffe://example.org/agent/report-bot"), time.Hour)
	if err != nil {
		return err
	}
	if err := d.writeSVIDs(ctx, "alice", "spiffe://example.org/ops/alice", "carol", "spiffe://example.org/ops/carol",
		"mcp-bot", "spiffe://example.org/agent/mcp-bot"); err != nil {
		return err
	}
	bundle, err := d.st.SPIRE.Bundle(ctx)
	if err != nil {
		return err
	}
	bundleJSON, err := bundle.Marshal()
	if err != nil {
		return err
	}
	files := map[string][]byte{
		"latch-svid.pem": latchSVID.CertPEM, "latch-key.pem": latchSVID.KeyPEM, "bundle.json": bundleJSON,
		"agent-svid.pem": agentSVID.CertPEM, "agent-key.pem": agentSVID.KeyPEM, "bundle.pem": agentSVID.BundlePEM,
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(d.dir, name), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}

func (d *demo) writeConfig(env *vaultenv.Env, store string) error {
	api, err := freeAddr()
	if err != nil {
		return err
	}
	metrics, err := freeAddr()
	if err != nil {
		return err
	}
	d.api, d.metrics, d.sock = api, metrics, filepath.Join(d.dir, "admin.sock")
	d.agentFlags = []string{"--addr", "https://" + api, "--cert", filepath.Join(d.dir, "agent-svid.pem"),
		"--key", filepath.Join(d.dir, "agent-key.pem"), "--bundle", filepath.Join(d.dir, "bundle.pem")}
	now := time.Now().UTC().Truncate(time.Second)
	cfg := fmt.Sprintf(demoConfig, api, d.sock, metrics, store, d.st.Vault.Addr, env.RoleIDFile, env.SecretIDFile,
		now.Add(-10*time.Minute).Format(time.RFC3339), now.Add(50*time.Minute).Format(time.RFC3339))
	if err := os.WriteFile(filepath.Join(d.dir, "latch.yaml"), []byte(cfg), 0o600); err != nil {
		return err
	}
	for name, body := range demoTemplates {
		if err := os.WriteFile(filepath.Join(d.dir, "templates", name), []byte(body), 0o600); err != nil {
			return err
		}
	}
	return nil
}

func freeAddr() (string, error) {
	port, err := stack.FreePort(false)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), nil
}

func (d *demo) startServer(ctx context.Context) (*exec.Cmd, error) {
	step("latch server --config " + filepath.Join(filepath.Base(d.dir), "latch.yaml") + " (log: " + filepath.Join(d.dir, "server.log") + ")")
	logFile, err := os.Create(filepath.Join(d.dir, "server.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(d.latch, "server", "--config", filepath.Join(d.dir, "latch.yaml"))
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + d.metrics + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				fmt.Printf("  ready: API on https://%s, metrics on http://%s\n", d.api, d.metrics)
				return cmd, nil
			}
		}
		if ctx.Err() != nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	d.stopServer(cmd)
	log, _ := os.ReadFile(filepath.Join(d.dir, "server.log"))
	return nil, fmt.Errorf("latch server did not become ready:\n%s", log)
}

func (d *demo) stopServer(cmd *exec.Cmd) {
	if cmd.ProcessState != nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// run runs the latch CLI, printing the command and its output.
func (d *demo) run(args ...string) (string, error) {
	fmt.Printf("$ latch %s\n", strings.Join(shortArgs(args), " "))
	cmd := exec.Command(d.latch, args...)
	cmd.Env = append(os.Environ(), "SPIFFE_ENDPOINT_SOCKET=")
	var out strings.Builder
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	if !strings.Contains(strings.Join(args, " "), "-o json") {
		fmt.Print(indent(out.String()))
	}
	if err != nil {
		return out.String(), fmt.Errorf("latch %s: %w\n%s", args[0], err, out.String())
	}
	return out.String(), nil
}

// shortArgs hides the identity flags, which are the same every time.
func shortArgs(args []string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		switch args[i] {
		case "--addr", "--cert", "--key", "--bundle", "--admin-socket", "--db":
			out = append(out, args[i], filepath.Base(args[i+1]))
			i++
			continue
		}
		if strings.Contains(args[i], "\n") {
			out = append(out, "'…'")
			continue
		}
		out = append(out, args[i])
	}
	return out
}

func indent(s string) string {
	if s == "" {
		return ""
	}
	return "  " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n  ") + "\n"
}
