package server

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/latchbroker/latch/broker/api"
	"github.com/latchbroker/latch/broker/brokertest"
)

const mcpAgentPrefix = "spiffe://example.org/mcp/"

// mcpConfigYAML offers nightly-report with a query command whose script
// also leaks the credential to a file (which the test reads, to know what
// to look for) and to its output (which must come back redacted), a
// critical task, and a task the agent is not granted.
const mcpConfigYAML = `console_url: https://console.example.org
tasks:
  nightly-report:
    commands:
      query:
        description: Run one arithmetic query on the report database.
        run: [/bin/sh, -c, 'printf "%s\n%s\n" "$PGUSER" "$PGPASSWORD" > "$LEAK_FILE"; echo "connecting as $PGUSER with $PGPASSWORD"; exec psql -X -At -c "$0"']
        args: [ { name: query, pattern: "^SELECT [0-9+ ]+$" } ]
        env: { PGUSER: username, PGPASSWORD: password }
        set_env: { PGHOST: 127.0.0.1, PGPORT: "{{port}}", PGDATABASE: postgres, LEAK_FILE: "{{dir}}/leaked" }
  ticket-critical:
    commands:
      read: { run: [/bin/true] }
  deploy:
    commands:
      read: { run: [/bin/true] }
`

// startMCPLatch starts latch with the MCP agents granted nightly-report
// and ticket-critical, and writes latch mcp's config (mcpConfigYAML).
func startMCPLatch(t *testing.T) (*latch, string) {
	t.Helper()
	l := startLatchWith(t, latchOptions{Agents: `  - id: ` + mcpAgentPrefix + `*
    owner: spiffe://example.org/ops/bob
    templates: [nightly-report, ticket-critical]
`, Templates: map[string]string{"ticket-critical.yaml": approvalTemplates["ticket-critical.yaml"]}})
	cfg := strings.NewReplacer("{{port}}", fmt.Sprint(st.Postgres.Port), "{{dir}}", l.dir).Replace(mcpConfigYAML)
	path := filepath.Join(l.dir, "mcp.yaml")
	writeFile(t, path, []byte(cfg))
	return l, path
}

// mcpSession starts latch mcp as agent (its SVID in files) under a
// go-sdk client, and returns the session and every JSON-RPC message
// both ways.
func mcpSession(ctx context.Context, t *testing.T, l *latch, path, agent string) (*sdk.ClientSession, *brokertest.SyncBuffer) {
	t.Helper()
	cmd, _, stderr := l.command(ctx, nil, append([]string{"mcp", "--config", path}, l.svidFiles(agent)...)...)
	cmd.Stdout = nil // the transport's pipe
	wire := new(brokertest.SyncBuffer)
	client := sdk.NewClient(&sdk.Implementation{Name: "latch-test-client", Version: "1"}, nil)
	session, err := client.Connect(ctx, &sdk.LoggingTransport{Transport: &sdk.CommandTransport{Command: cmd}, Writer: wire}, nil)
	if err != nil {
		t.Fatalf("connect to latch mcp: %v\n%s", err, stderr.String())
	}
	t.Cleanup(func() {
		session.Close()
		if t.Failed() {
			t.Logf("latch mcp's log:\n%s", stderr.String())
		}
	})
	return session, wire
}

// call calls a tool and returns its result, with the structured content
// decoded into out (when not nil).
func call(ctx context.Context, t *testing.T, s *sdk.ClientSession, tool string, args map[string]any, out any) *sdk.CallToolResult {
	t.Helper()
	res, err := s.CallTool(ctx, &sdk.CallToolParams{Name: tool, Arguments: args})
	if err != nil {
		t.Fatalf("call %s: %v", tool, err)
	}
	if out != nil && res.StructuredContent != nil {
		b, _ := json.Marshal(res.StructuredContent)
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s's result %s: %v", tool, b, err)
		}
	}
	return res
}

func resultText(r *sdk.CallToolResult) string {
	var b strings.Builder
	for _, c := range r.Content {
		if tc, ok := c.(*sdk.TextContent); ok {
			b.WriteString(tc.Text)
		}
	}
	return b.String()
}

// TestMCP_GoClient: the go-sdk client over stdio lists latch mcp's tools
// and tasks, runs a PostgreSQL query with a database credential and gets
// its result with the credential nowhere in any message; a command or
// argument outside the configuration is refused before anything is
// issued, an ungranted task is a tool error with its reason, and a
// critical task comes back pending without minting.
func TestMCP_GoClient(t *testing.T) {
	l, path := startMCPLatch(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	agent := mcpAgentPrefix + "llm-bot"
	s, wire := mcpSession(ctx, t, l, path, agent)

	tools, err := s.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tool := range tools.Tools {
		names = append(names, tool.Name)
	}
	if got := strings.Join(names, ","); got != "list_tasks,request_status,run_with_credential" {
		t.Fatalf("tools = %s", got)
	}
	var tasks struct {
		Tasks []struct {
			api.Task
			Commands []struct{ Name string } `json:"commands"`
		} `json:"tasks"`
	}
	call(ctx, t, s, "list_tasks", map[string]any{}, &tasks)
	listed := map[string]string{}
	for _, task := range tasks.Tasks {
		listed[task.Name] = task.Risk + "/" + task.Approval
	}
	if listed["nightly-report"] != "low/depends" || listed["ticket-critical"] != "critical/yes" || len(listed) != 2 {
		t.Fatalf("list_tasks = %v, want nightly-report (low; its region decides) and ticket-critical (needs approval), not deploy", listed)
	}

	leases := func() int {
		res, err := l.admin().Leases(ctx, api.LeaseQuery{Agent: agent})
		if err != nil {
			t.Fatal(err)
		}
		return len(res.Leases)
	}
	query := map[string]any{"task": "nightly-report", "params": map[string]string{"region": "eu"}, "reason": "sum for the report",
		"command": "query", "args": []string{"SELECT 40 + 2"}}
	var ran struct {
		Status   string `json:"status"`
		ExitCode int    `json:"exit_code"`
		Output   string `json:"output"`
	}
	const traceID = "5bf92f3577b34da6a3ce929d0e0e4736"
	r0, err := s.CallTool(ctx, &sdk.CallToolParams{Name: "run_with_credential", Arguments: query,
		Meta: sdk.Meta{"traceparent": "00-" + traceID + "-00f067aa0ba902b7-01"}})
	if err != nil || r0.IsError {
		t.Fatalf("run_with_credential with a traceparent: %v %s", err, resultText(r0))
	}
	traced, err := l.admin().Leases(ctx, api.LeaseQuery{Agent: agent})
	if err != nil || len(traced.Leases) != 1 || traced.Leases[0].TraceID != traceID || !strings.Contains(traced.Leases[0].Reason, "(via MCP client latch-test-client)") {
		t.Fatalf("the lease of an MCP call: %+v %v, want its trace ID and the client's name in its reason", traced, err)
	}
	if r := call(ctx, t, s, "run_with_credential", query, &ran); r.IsError || ran.Status != "ran" || ran.ExitCode != 0 || !strings.Contains(ran.Output, "42") {
		t.Fatalf("run_with_credential: %s %+v", resultText(r), ran)
	}
	leaked, err := os.ReadFile(filepath.Join(l.dir, "leaked"))
	if err != nil {
		t.Fatal(err)
	}
	user, password, _ := strings.Cut(strings.TrimSpace(string(leaked)), "\n")
	if len(password) < 8 || !strings.Contains(ran.Output, "connecting as [redacted] with [redacted]") {
		t.Fatalf("output %q: want the credential redacted (the command printed it)", ran.Output)
	}
	if !strings.Contains(wire.String(), "connecting as [redacted]") {
		t.Fatal("the transport's log lacks the run's result: the scan below would see nothing")
	}
	if strings.Contains(wire.String(), password) || strings.Contains(wire.String(), user) {
		t.Fatal("a JSON-RPC message holds the database credential")
	}
	if n := leases(); n != 2 {
		t.Fatalf("after two runs: %d leases, want 2", n)
	}

	for name, args := range map[string]map[string]any{
		"unknown command":  {"task": "nightly-report", "params": map[string]string{"region": "eu"}, "reason": "x", "command": "drop"},
		"argument outside": {"task": "nightly-report", "params": map[string]string{"region": "eu"}, "reason": "x", "command": "query", "args": []string{"SELECT 1; DROP TABLE x"}},
	} {
		if r := call(ctx, t, s, "run_with_credential", args, nil); !r.IsError || !strings.Contains(resultText(r), "before any credential was issued") {
			t.Errorf("%s: %s, want a refusal before issuing", name, resultText(r))
		}
	}
	if n := leases(); n != 2 {
		t.Fatalf("refused calls issued: %d leases, want still 2", n)
	}
	denied := call(ctx, t, s, "run_with_credential", map[string]any{"task": "deploy", "reason": "x", "command": "read"}, nil)
	if !denied.IsError || !strings.Contains(resultText(denied), "task_not_granted") {
		t.Fatalf("an ungranted task: %s, want a tool error naming task_not_granted", resultText(denied))
	}

	var pending struct {
		Status     string `json:"status"`
		ApprovalID string `json:"approval_id"`
		Link       string `json:"console_link"`
		Next       string `json:"next"`
	}
	r := call(ctx, t, s, "run_with_credential", map[string]any{"task": "ticket-critical", "params": map[string]string{"ticket": "7"},
		"reason": "rotate", "command": "read"}, &pending)
	if r.IsError || pending.Status != "pending" || pending.ApprovalID == "" || !strings.Contains(pending.Next, "Do not retry in a loop") ||
		pending.Link != "https://console.example.org/approvals/"+pending.ApprovalID {
		t.Fatalf("a critical task: %s %+v, want pending with its console link", resultText(r), pending)
	}
	if n := leases(); n != 2 {
		t.Fatalf("a pending request minted: %d leases", n)
	}
	var status struct{ Status, Next string }
	call(ctx, t, s, "request_status", map[string]any{"approval_id": pending.ApprovalID}, &status)
	if status.Status != "pending" || !strings.Contains(status.Next, "A person must approve") {
		t.Fatalf("request_status = %+v", status)
	}

	audit, err := l.admin().Audit(ctx, api.AuditQuery{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	calls := map[string]int{}
	for _, ev := range audit.Events {
		if ev.Type == "tool_call" && ev.Actor == agent && ev.Details["client"] == "latch-test-client" {
			calls[ev.Details["tool"]]++
			if ev.Details["trace_id"] == traceID {
				calls["traced"]++
			}
		}
	}
	if calls["list_tasks"] != 1 || calls["run_with_credential"] != 6 || calls["request_status"] != 1 || calls["traced"] != 1 {
		t.Fatalf("audited tool calls = %v, want every call (1 list_tasks, 6 run_with_credential, 1 request_status), one with its trace", calls)
	}
}

// TestMCP_TypeScriptClient: the official MCP TypeScript SDK's client (a
// client nobody here wrote) does what the go-sdk client does: lists the
// tools, runs the database query and reads its result with the
// credential in no message either way (a tee on each side of latch mcp
// records them), gets the ungranted task as a tool error and the
// critical one pending.
func TestMCP_TypeScriptClient(t *testing.T) {
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(root, "integration/server/testdata/mcp-ts/client.mjs")
	if _, err := os.Stat(filepath.Join(filepath.Dir(script), "node_modules/@modelcontextprotocol/sdk")); err != nil {
		t.Fatalf("the MCP TypeScript SDK is not installed: run make tools (npm ci in %s): %v", filepath.Dir(script), err)
	}
	l, path := startMCPLatch(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	calls, _ := json.Marshal(map[string]any{
		"tasks": map[string]any{"name": "list_tasks", "arguments": map[string]any{}},
		"run": map[string]any{"name": "run_with_credential", "arguments": map[string]any{"task": "nightly-report", "params": map[string]string{"region": "us"},
			"reason": "sum for the report", "command": "query", "args": []string{"SELECT 40 + 2"}}},
		"denied":  map[string]any{"name": "run_with_credential", "arguments": map[string]any{"task": "deploy", "reason": "x", "command": "read"}},
		"pending": map[string]any{"name": "run_with_credential", "arguments": map[string]any{"task": "ticket-critical", "params": map[string]string{"ticket": "7"}, "reason": "rotate", "command": "read"}},
	})
	in, out := filepath.Join(l.dir, "wire-in"), filepath.Join(l.dir, "wire-out")
	// sh: tee what the client sends, run latch mcp, tee what it answers.
	tee := `tee -a "$WIRE_IN" | "$0" "$@" | tee -a "$WIRE_OUT"`
	args := append([]string{script, "/bin/sh", "-c", tee, latchBin, "mcp", "--config", path}, l.svidFiles(mcpAgentPrefix+"ts-bot")...)
	cmd, stdout, stderr := l.command(ctx, []string{"MCP_CALLS=" + string(calls), "WIRE_IN=" + in, "WIRE_OUT=" + out}, "")
	cmd.Path, cmd.Args = mustLookPath(t, "node"), append([]string{"node"}, args...)
	if err := cmd.Run(); err != nil {
		t.Fatalf("node client.mjs: %v\nstderr: %s", err, stderr.String())
	}
	var got struct {
		Tools                []string
		Run, Denied, Pending struct {
			IsError           bool `json:"isError"`
			Content           []struct{ Text string }
			StructuredContent map[string]any `json:"structuredContent"`
		}
	}
	if err := json.Unmarshal([]byte(stdout.String()), &got); err != nil {
		t.Fatalf("the client's output %q: %v", stdout.String(), err)
	}
	if strings.Join(got.Tools, ",") != "list_tasks,request_status,run_with_credential" {
		t.Errorf("tools = %v", got.Tools)
	}
	if got.Run.IsError || !strings.Contains(fmt.Sprint(got.Run.StructuredContent["output"]), "42") {
		t.Errorf("run_with_credential: %+v", got.Run)
	}
	if !got.Denied.IsError || !strings.Contains(fmt.Sprint(got.Denied.Content), "task_not_granted") {
		t.Errorf("the ungranted task: %+v, want a tool error naming task_not_granted", got.Denied)
	}
	if got.Pending.IsError || got.Pending.StructuredContent["status"] != "pending" {
		t.Errorf("the critical task: %+v, want pending", got.Pending)
	}
	leaked, err := os.ReadFile(filepath.Join(l.dir, "leaked"))
	if err != nil {
		t.Fatal(err)
	}
	user, password, _ := strings.Cut(strings.TrimSpace(string(leaked)), "\n")
	for f, must := range map[string]string{in: `"run_with_credential"`, out: "connecting as [redacted]"} {
		wire, err := os.ReadFile(f)
		if err != nil || !strings.Contains(string(wire), must) {
			t.Fatalf("%s lacks %q, so the scan would see nothing: %v (%d bytes)", f, must, err, len(wire))
		}
		if len(password) < 8 || strings.Contains(string(wire), password) || strings.Contains(string(wire), user) {
			t.Fatalf("%s holds the database credential", filepath.Base(f))
		}
	}
}

func mustLookPath(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed (Node.js 20 runs the MCP TypeScript SDK client): %v", name, err)
	}
	return p
}
