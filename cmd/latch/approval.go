package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/latchbroker/latch/broker/api"
)

func approvalCommand() *cli.Command {
	review := func(approve bool) remoteAction {
		return func(c *cli.Context, args []string, connect connector) error {
			return runApprovalReview(c, args, connect, approve)
		}
	}
	reviewFlags := func() []cli.Flag {
		return []cli.Flag{reasonFlag("why: goes to the audit log with your SPIFFE ID"), outputFlag("table", "json")}
	}
	return &cli.Command{
		Name:  "approval",
		Usage: "review high-risk requests: list, show, approve, deny (approver)",
		Subcommands: []*cli.Command{
			operatorCommand("list", "approvals, newest first",
				"latch approval list [--status pending|approved|denied|expired|consumed] [--agent ID] [-o table|json]",
				"Lists approval requests. Pending ones wait for approvers; an approved one\n"+
					"waits for its agent to pick it up, once.",
				[]cli.Flag{
					&cli.StringFlag{Name: "status", Usage: "only approvals in this status"},
					&cli.StringFlag{Name: "agent", Usage: "only this agent's approvals"},
					&cli.IntFlag{Name: "limit", Usage: "at most this many"},
					outputFlag("table", "json"),
				}, runApprovalList),
			operatorCommand("show", "everything an approver needs to decide",
				"latch approval show ID [-o table|json]",
				"Shows the agent and its owner, the task and params, the agent's reason and\n"+
					"trace id, the tier and why, the TTL, the reviews so far, and exactly what\n"+
					"would be minted: the rendered Vault policy, path or certificate names.\n"+
					"With $LATCH_TRACE_URL (a link template such as\n"+
					"https://jaeger.example.org/trace/{trace_id}) it links the agent's trace.",
				[]cli.Flag{outputFlag("table", "json")}, runApprovalShow),
			operatorCommand("approve", "approve a pending request",
				"latch approval approve ID --reason \"...\"",
				"Counts your approval. The request is approved once its tier's number of\n"+
					"distinct approvers is reached. The requesting agent, its owner and the\n"+
					"admin socket can never approve.",
				reviewFlags(), review(true)),
			operatorCommand("deny", "deny a pending request",
				"latch approval deny ID --reason \"...\"",
				"Denies the request: one deny is final, whatever approvals came before.",
				reviewFlags(), review(false)),
		},
	}
}

func runApprovalList(c *cli.Context, args []string, connect connector) error {
	if len(args) > 0 {
		return usageErrorf("unexpected argument %q; usage: %s", args[0], c.Command.UsageText)
	}
	cl, err := connect()
	if err != nil {
		return err
	}
	ctx, cancel := callCtx(c)
	defer cancel()
	res, err := cl.Approvals(ctx, api.ApprovalQuery{Status: c.String("status"), Agent: c.String("agent"), Limit: c.Int("limit")})
	if err != nil {
		return err
	}
	if c.String("output") == "json" {
		return writeJSON(c.App.Writer, res)
	}
	tw := newTable(c.App.Writer)
	fmt.Fprintln(tw, "ID\tSTATUS\tAGENT\tTASK\tTIER\tAPPROVALS\tEXPIRES")
	for _, a := range res.Approvals {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\n", a.ID, a.Status, a.Agent, a.Task, a.Tier,
			approvals(a), a.Required, fmtTime(a.ExpiresAt))
	}
	return tw.Flush()
}

// approvals counts the approve reviews.
func approvals(a api.Approval) int {
	n := 0
	for _, r := range a.Reviews {
		if r.Decision == "approve" {
			n++
		}
	}
	return n
}

func runApprovalShow(c *cli.Context, args []string, connect connector) error {
	id, err := oneArg(args, "approval ID")
	if err != nil {
		return err
	}
	cl, err := connect()
	if err != nil {
		return err
	}
	ctx, cancel := callCtx(c)
	defer cancel()
	a, err := cl.Approval(ctx, id)
	if err != nil {
		return err
	}
	return printApproval(c, a)
}

func runApprovalReview(c *cli.Context, args []string, connect connector, approve bool) error {
	id, err := oneArg(args, "approval ID")
	if err != nil {
		return err
	}
	reason, err := requireReason(c)
	if err != nil {
		return err
	}
	cl, err := connect()
	if err != nil {
		return err
	}
	ctx, cancel := callCtx(c)
	defer cancel()
	review := cl.Deny
	if approve {
		review = cl.Approve
	}
	a, err := review(ctx, id, reason)
	if err != nil {
		return err
	}
	if c.String("output") == "json" {
		return writeJSON(c.App.Writer, api.ApprovalResponse{Approval: *a})
	}
	fmt.Fprintf(c.App.Writer, "approval %s is %s (%d of %d approvals)\n", a.ID, a.Status, approvals(*a), a.Required)
	return nil
}

func printApproval(c *cli.Context, a *api.Approval) error {
	if c.String("output") == "json" {
		return writeJSON(c.App.Writer, api.ApprovalResponse{Approval: *a})
	}
	tw := newTable(c.App.Writer)
	row := func(k, v string) {
		if v != "" {
			// A multi-line value (an agent's reason) goes on in its column.
			fmt.Fprintf(tw, "%s:\t%s\n", k, strings.ReplaceAll(v, "\n", "\n\t"))
		}
	}
	row("ID", a.ID)
	row("Status", a.Status)
	row("Agent", a.Agent)
	row("Owner", a.Owner)
	row("Task", a.Task+" "+a.TemplateVersion)
	row("Backend", a.Backend)
	row("Params", kvString(a.Params))
	row("Agent's reason", a.Reason)
	row("Trace ID", a.TraceID)
	row("Trace", api.TraceLink(os.Getenv("LATCH_TRACE_URL"), a.TraceID))
	row("Tier", a.Tier+" ("+strings.Join(a.TierWhy, "; ")+")")
	for _, r := range a.Reasons {
		row("Needs approval", r.Code+": "+r.Message)
	}
	row("TTL", fmt.Sprintf("%s (max %s)", a.TTL, a.MaxTTL))
	row("Approvals", fmt.Sprintf("%d of %d", approvals(*a), a.Required))
	for _, r := range a.Reviews {
		who := r.Approver
		if r.Email != "" {
			who += " (" + r.Email + ")"
		}
		row("Review", fmt.Sprintf("%s %s at %s: %s", who, r.Decision, fmtTime(r.At), r.Reason))
	}
	row("Created", fmtTime(a.CreatedAt))
	row("Expires", fmtTime(a.ExpiresAt))
	if !a.PickupBy.IsZero() {
		row("Pick up by", fmtTime(a.PickupBy))
	}
	row("Lease", a.LeaseID)
	if err := tw.Flush(); err != nil {
		return err
	}
	w := c.App.Writer
	r := a.Rendered
	fmt.Fprintln(w, "\nWould mint:")
	if r.Policy != "" {
		fmt.Fprintf(w, "  Vault policy:\n    %s\n", strings.ReplaceAll(strings.TrimSpace(r.Policy), "\n", "\n    "))
	}
	if r.Path != "" {
		fmt.Fprintf(w, "  path: %s\n", r.Path)
	}
	if r.CommonName != "" {
		fmt.Fprintf(w, "  certificate: %s %s %s\n", r.CommonName, strings.Join(r.AltNames, ","), strings.Join(r.URISANs, ","))
	}
	if len(r.Vars) > 0 {
		fmt.Fprintf(w, "  vars: %s\n", kvString(r.Vars))
	}
	return nil
}
