package mcp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/latchbroker/latch/broker/api"
)

// RunInput is run_with_credential's input.
type RunInput struct {
	Task       string            `json:"task" jsonschema:"the task, as list_tasks names it"`
	Params     map[string]string `json:"params,omitempty" jsonschema:"the task's parameters"`
	Reason     string            `json:"reason" jsonschema:"why you need the credential: audited, and shown to the people who approve"`
	Command    string            `json:"command" jsonschema:"one of the task's commands, as list_tasks names them"`
	Args       []string          `json:"args,omitempty" jsonschema:"the command's arguments, each matching its pattern"`
	ApprovalID string            `json:"approval_id,omitempty" jsonschema:"the approval ID of an approved request, to pick it up"`
}

// RunOutput is run_with_credential's result.
type RunOutput struct {
	// Status is "ran" (ExitCode and Output are set) or "pending" (a
	// person must approve first: ApprovalID, Next).
	Status     string `json:"status"`
	ExitCode   int    `json:"exit_code"`
	Output     string `json:"output,omitempty"`
	Truncated  bool   `json:"truncated,omitempty"`
	ApprovalID string `json:"approval_id,omitempty"`
	Link       string `json:"console_link,omitempty"`
	Next       string `json:"next,omitempty"`
}

func (s *Server) runWithCredential(ctx context.Context, req *sdk.CallToolRequest, in RunInput) (*sdk.CallToolResult, RunOutput, error) {
	if err := s.audit(ctx, req, "run_with_credential", in.Task); err != nil {
		return toolError(err), RunOutput{}, nil
	}
	// Everything the configuration decides, before any credential exists.
	cmd, ok := s.cfg.Tasks[in.Task].Commands[in.Command]
	if !ok {
		return refuse(fmt.Sprintf("task %q has no command %q here: list_tasks names the commands", in.Task, in.Command)), RunOutput{}, nil
	}
	argv, err := cmd.argv(in.Args)
	if err != nil {
		return refuse(err.Error()), RunOutput{}, nil
	}
	creq := api.CredentialsRequest{Task: in.Task, Params: in.Params, Reason: s.reasonOf(req, in.Reason), ApprovalID: in.ApprovalID,
		TraceID: traceOf(req)}
	res, err := s.broker.Credentials(ctx, creq)
	if err != nil {
		return toolError(err), RunOutput{}, nil
	}
	if res.Approval != nil {
		a := res.Approval
		return nil, RunOutput{Status: "pending", ApprovalID: a.ID, Link: s.link(a.ID),
			Next: fmt.Sprintf("A person must approve this request (%d approval(s) needed) before anything is issued; nothing ran. "+
				"Do not retry in a loop: tell the user, then call request_status with approval_id %s later.", a.Required, a.ID)}, nil
	}
	out := RunOutput{Status: "ran"}
	out.ExitCode, out.Output, out.Truncated = s.run(ctx, cmd, argv, res.Secret)
	if err := s.broker.Release(context.WithoutCancel(ctx), res.Lease.ID); err != nil {
		s.log.Warn("release the lease after the command", "lease", res.Lease.ID, "err", err)
	}
	return nil, out, nil
}

// traceOf is the trace ID of the call's W3C trace context, which MCP
// clients that trace put in _meta.traceparent; "" without one.
func traceOf(req *sdk.CallToolRequest) string {
	tp, _ := req.Params.GetMeta()["traceparent"].(string)
	tc, err := api.ParseTraceparent(tp)
	if err != nil {
		return ""
	}
	return tc.TraceID
}

// reasonOf is the model's reason, with the MCP client's name: the audit
// log shows which client asked.
func (s *Server) reasonOf(req *sdk.CallToolRequest, reason string) string {
	if ci := req.ClientInfo(); ci != nil && ci.Name != "" {
		return strings.TrimSpace(reason) + " (via MCP client " + ci.Name + ")"
	}
	return reason
}

// run runs argv with the secret in its environment and returns its exit
// code and output (stdout and stderr together), every value of the
// secret redacted.
func (s *Server) run(ctx context.Context, cmd CommandConfig, argv []string, secret api.Secret) (int, string, bool) {
	ctx, cancel := context.WithTimeout(ctx, cmd.Timeout)
	defer cancel()
	c := exec.CommandContext(ctx, argv[0], argv[1:]...)
	c.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for _, k := range slices.Sorted(maps.Keys(cmd.SetEnv)) {
		c.Env = append(c.Env, k+"="+cmd.SetEnv[k])
	}
	for _, k := range slices.Sorted(maps.Keys(cmd.Env)) {
		c.Env = append(c.Env, k+"="+secret[cmd.Env[k]])
	}
	buf := &capped{max: cmd.MaxOutput + longest(secret)}
	c.Stdout, c.Stderr = buf, buf
	err := c.Run()
	code := 0
	if ee, ok := errors.AsType[*exec.ExitError](err); ok {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
		fmt.Fprintf(buf, "\nlatch: %v", err)
	}
	out := redact(buf.String(), secret)
	if buf.cut {
		out = dropPartialTail(out, secret)
	}
	if len(out) > cmd.MaxOutput {
		out = strings.ToValidUTF8(out[:cmd.MaxOutput], "")
	}
	return code, out, buf.cut || len(out) == cmd.MaxOutput
}

// dropPartialTail drops the start of a secret value that ends out: a
// value the cap cut is only partly there, where redact cannot see it.
func dropPartialTail(out string, secret api.Secret) string {
	for _, v := range secret {
		for k := min(len(v)-1, len(out)); k > 0; k-- {
			if strings.HasSuffix(out, v[:k]) {
				out = out[:len(out)-k]
				break
			}
		}
	}
	return out
}

func longest(secret api.Secret) int {
	n := 0
	for _, v := range secret {
		n = max(n, len(v))
	}
	return n
}

// redact replaces every value of the secret in out, longest first (a
// value inside another goes with it).
func redact(out string, secret api.Secret) string {
	values := make([]string, 0, len(secret))
	for _, v := range secret {
		if v != "" {
			values = append(values, v)
		}
	}
	slices.SortFunc(values, func(a, b string) int { return len(b) - len(a) })
	for _, v := range values {
		out = strings.ReplaceAll(out, v, "[redacted]")
		// A multi-line value (a key, a certificate) line by line too: a
		// command may print it reflowed.
		for line := range strings.SplitSeq(v, "\n") {
			if line = strings.TrimSpace(line); len(line) >= 8 {
				out = strings.ReplaceAll(out, line, "[redacted]")
			}
		}
	}
	return out
}

// capped keeps the first max bytes written to it.
type capped struct {
	mu  sync.Mutex
	b   bytes.Buffer
	max int
	cut bool
}

func (c *capped) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	room := c.max - c.b.Len()
	if len(p) > room {
		c.b.Write(p[:max(room, 0)])
		c.cut = true
		return len(p), nil
	}
	return c.b.Write(p)
}

func (c *capped) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.b.String()
}

// refuse is a call the configuration refuses: nothing was issued.
func refuse(msg string) *sdk.CallToolResult {
	return &sdk.CallToolResult{IsError: true, Content: []sdk.Content{&sdk.TextContent{Text: "refused before any credential was issued: " + msg}}}
}
