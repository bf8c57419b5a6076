package mcp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/latchbroker/latch/broker/api"
	"github.com/latchbroker/latch/broker/client"
)

// Broker is what the server asks of latch, as the agent: *client.Client.
type Broker interface {
	Tasks(ctx context.Context) (*api.TasksResponse, error)
	Credentials(ctx context.Context, req api.CredentialsRequest) (*api.CredentialsResponse, error)
	Release(ctx context.Context, leaseID string) error
	Approval(ctx context.Context, id string) (*api.Approval, error)
	ToolCall(ctx context.Context, call api.ToolCall) error
}

var _ Broker = (*client.Client)(nil)

// Server is the MCP server of one agent.
type Server struct {
	cfg    *Config
	broker Broker
	log    *slog.Logger
}

// New returns the MCP server for cfg, asking b as the agent.
func New(cfg *Config, b Broker, log *slog.Logger) *sdk.Server {
	s := &Server{cfg: cfg, broker: b, log: log}
	srv := sdk.NewServer(&sdk.Implementation{Name: "latch", Version: "1"}, &sdk.ServerOptions{
		Instructions: "latch issues short-lived credentials for named tasks and runs the configured commands with them. " +
			"You never see a credential: run_with_credential runs a command with it and returns the command's output, secrets redacted. " +
			"Some tasks need a person's approval: then wait, and ask request_status later; never retry in a loop.",
	})
	sdk.AddTool(srv, &sdk.Tool{Name: "list_tasks", Description: "List the tasks this agent may ask credentials for, " +
		"their parameters, whether a person must approve now, and the commands each may run."}, s.listTasks)
	sdk.AddTool(srv, &sdk.Tool{Name: "run_with_credential", Description: "Get a credential for a task and run one of the task's " +
		"commands with it; returns the exit status and output, with every secret value redacted. The lease ends with the command."}, s.runWithCredential)
	sdk.AddTool(srv, &sdk.Tool{Name: "request_status", Description: "The state of a request that waits for a person's approval."}, s.requestStatus)
	return srv
}

// TaskInfo is a task as list_tasks shows it.
type TaskInfo struct {
	api.Task
	Commands []CommandInfo `json:"commands"`
}

// CommandInfo is a command as list_tasks shows it.
type CommandInfo struct {
	Name        string    `json:"name"`
	Description string    `json:"description,omitempty"`
	Args        []ArgInfo `json:"args,omitempty"`
}

// ArgInfo is an argument the model supplies.
type ArgInfo struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	Pattern     string `json:"pattern"`
}

// ListTasksOutput is list_tasks' result.
type ListTasksOutput struct {
	Tasks []TaskInfo `json:"tasks"`
}

func (s *Server) listTasks(ctx context.Context, req *sdk.CallToolRequest, _ struct{}) (*sdk.CallToolResult, ListTasksOutput, error) {
	if err := s.audit(ctx, req, "list_tasks", ""); err != nil {
		return toolError(err), ListTasksOutput{}, nil
	}
	res, err := s.broker.Tasks(ctx)
	if err != nil {
		return toolError(err), ListTasksOutput{}, nil
	}
	out := ListTasksOutput{Tasks: []TaskInfo{}}
	for _, t := range res.Tasks {
		tc, ok := s.cfg.Tasks[t.Name]
		if !ok {
			continue // granted, but not offered to the model
		}
		info := TaskInfo{Task: t}
		for _, name := range slices.Sorted(maps.Keys(tc.Commands)) {
			c := tc.Commands[name]
			ci := CommandInfo{Name: name, Description: c.Description}
			for _, a := range c.Args {
				ci.Args = append(ci.Args, ArgInfo{Name: a.Name, Description: a.Description, Pattern: a.Pattern})
			}
			info.Commands = append(info.Commands, ci)
		}
		out.Tasks = append(out.Tasks, info)
	}
	return nil, out, nil
}

// StatusInput is request_status' input.
type StatusInput struct {
	ApprovalID string `json:"approval_id" jsonschema:"the approval ID run_with_credential returned"`
}

// StatusOutput is request_status' result.
type StatusOutput struct {
	Status    string `json:"status"` // pending, approved, denied, expired
	Approvals int    `json:"approvals"`
	Required  int    `json:"required"`
	Link      string `json:"console_link,omitempty"`
	Next      string `json:"next"`
}

func (s *Server) requestStatus(ctx context.Context, req *sdk.CallToolRequest, in StatusInput) (*sdk.CallToolResult, StatusOutput, error) {
	if err := s.audit(ctx, req, "request_status", ""); err != nil {
		return toolError(err), StatusOutput{}, nil
	}
	a, err := s.broker.Approval(ctx, in.ApprovalID)
	if err != nil {
		return toolError(err), StatusOutput{}, nil
	}
	out := StatusOutput{Status: a.Status, Required: a.Required, Link: s.link(a.ID)}
	for _, r := range a.Reviews {
		if r.Decision == "approve" {
			out.Approvals++
		}
	}
	switch a.Status {
	case "pending":
		out.Next = "A person must approve this request; it is still waiting. Do not retry in a loop: tell the user, and ask again later."
	case "approved":
		out.Next = "Approved: call run_with_credential again with the same task, params and command, and this approval_id."
	default:
		out.Next = "The request is " + a.Status + ": it will not be granted. Do not ask again unless the user tells you to."
	}
	return nil, out, nil
}

func (s *Server) link(approvalID string) string {
	if s.cfg.ConsoleURL == "" {
		return ""
	}
	return strings.TrimSuffix(s.cfg.ConsoleURL, "/") + "/approvals/" + approvalID
}

// audit has latch record the tool call (which MCP client, tool, task and
// trace) before the server acts on it: a call that cannot be audited is
// not made. It logs it on stderr too, never an argument.
func (s *Server) audit(ctx context.Context, req *sdk.CallToolRequest, tool, task string) error {
	name := ""
	if ci := req.ClientInfo(); ci != nil {
		name = ci.Name
	}
	s.log.Info("mcp tool call", "tool", tool, "task", task, "client", name)
	return s.broker.ToolCall(ctx, api.ToolCall{Client: clipName(name), Tool: tool, Task: task, TraceID: traceOf(req)})
}

// clipName bounds a client's name to what latch records.
func clipName(s string) string {
	if len(s) > api.MaxClientNameLen {
		return strings.ToValidUTF8(s[:api.MaxClientNameLen], "")
	}
	return s
}

// toolError is a failed call as the model sees it: latch's message and
// reasons (written for agents, never holding a secret), as a tool error.
func toolError(err error) *sdk.CallToolResult {
	msg := err.Error()
	if ce, ok := errors.AsType[*client.Error](err); ok {
		msg = ce.Message
		if len(ce.Reasons) > 0 {
			msg += " (reasons: " + strings.Join(ce.Reasons, ", ") + ")"
		}
		if !ce.NextAllowedAt.IsZero() {
			msg += fmt.Sprintf("; allowed again at %s", ce.NextAllowedAt.UTC().Format("2006-01-02T15:04:05Z"))
		}
	}
	return &sdk.CallToolResult{IsError: true, Content: []sdk.Content{&sdk.TextContent{Text: "refused: " + msg}}}
}
