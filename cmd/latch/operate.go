package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/latchbroker/latch/broker/api"
)

// operatorCommand builds a networked operator command: connection flags
// (with --admin-socket), exit codes, flags after arguments.
func operatorCommand(name, usage, usageText, description string, flags []cli.Flag,
	action remoteAction) *cli.Command {
	return &cli.Command{
		Name:         name,
		Usage:        usage,
		UsageText:    usageText,
		Description:  description + connHelp,
		Flags:        append(flags, connFlags(true)...),
		OnUsageError: onUsageError,
		Action:       remote(action),
	}
}

func leaseCommand() *cli.Command {
	return &cli.Command{
		Name:  "lease",
		Usage: "list and show leases (viewer)",
		Subcommands: []*cli.Command{
			operatorCommand("list", "list leases, newest first",
				"latch lease list [--agent ID] [--task T] [--state S] [--limit N] [-o table|json]",
				"Lists the leases latch holds, newest first, filtered by agent, task and\n"+
					"state ("+leaseStates+").\n"+
					"Never shows a secret: latch does not keep them.",
				[]cli.Flag{
					&cli.StringFlag{Name: "agent", Usage: "only this agent's leases (SPIFFE `ID`)"},
					&cli.StringFlag{Name: "task", Usage: "only leases of this `TASK`"},
					&cli.StringFlag{Name: "state", Usage: "only leases in this `STATE`"},
					&cli.IntFlag{Name: "limit", Usage: fmt.Sprintf("at most `N` leases (default %d, at most %d)", api.DefaultListLimit, api.MaxListLimit)},
					outputFlag("table", "json"),
				}, runLeaseList),
			operatorCommand("show", "show one lease",
				"latch lease show ID [-o table|json]",
				"Shows everything latch recorded of one lease: agent, task, template\n"+
					"version, params, reason, trace id, Vault references, times and state.\n"+
					"With $LATCH_TRACE_URL (a link template such as\n"+
					"https://jaeger.example.org/trace/{trace_id}) it links the agent's trace.",
				[]cli.Flag{outputFlag("table", "json")}, runLeaseShow),
		},
	}
}

func runLeaseList(c *cli.Context, args []string, connect connector) error {
	if len(args) > 0 {
		return usageErrorf("unexpected argument %q: filter with --agent, --task and --state", args[0])
	}
	cl, err := connect()
	if err != nil {
		return err
	}
	ctx, cancel := callCtx(c)
	defer cancel()
	res, err := cl.Leases(ctx, api.LeaseQuery{Agent: c.String("agent"), Task: c.String("task"), State: c.String("state"), Limit: c.Int("limit")})
	if err != nil {
		return err
	}
	if c.String("output") == "json" {
		return writeJSON(c.App.Writer, res)
	}
	tw := newTable(c.App.Writer)
	fmt.Fprintln(tw, "ID\tAGENT\tTASK\tVERSION\tSTATE\tISSUED\tEXPIRES\tREASON")
	for _, l := range res.Leases {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", l.ID, l.Agent, l.Task, shortVersion(l.TemplateVersion), l.State, fmtTime(l.IssuedAt), fmtTime(l.ExpiresAt), oneLine(l.Reason, 40))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if res.More {
		fmt.Fprintf(c.App.ErrWriter, "latch: more leases match; raise --limit or narrow the filters\n")
	}
	return nil
}

func runLeaseShow(c *cli.Context, args []string, connect connector) error {
	id, err := oneArg(args, "lease ID")
	if err != nil {
		return err
	}
	cl, err := connect()
	if err != nil {
		return err
	}
	ctx, cancel := callCtx(c)
	defer cancel()
	l, err := cl.Lease(ctx, id)
	if err != nil {
		return err
	}
	if c.String("output") == "json" {
		return writeJSON(c.App.Writer, api.LeaseResponse{Lease: *l})
	}
	tw := newTable(c.App.Writer)
	row := func(k, v string) {
		if v != "" {
			// A multi-line value (an agent's reason) goes on in its column.
			fmt.Fprintf(tw, "%s:\t%s\n", k, strings.ReplaceAll(v, "\n", "\n\t"))
		}
	}
	row("ID", l.ID)
	row("State", l.State)
	row("Agent", l.Agent)
	row("Task", l.Task)
	row("Template", l.Task+" "+l.TemplateVersion)
	row("Backend", l.Backend)
	row("Params", kvString(l.Params))
	row("Reason", l.Reason)
	row("Tier", l.Tier)
	row("Approval", l.ApprovalID)
	row("Request ID", l.RequestID)
	row("Trace ID", l.TraceID)
	row("Trace", api.TraceLink(os.Getenv("LATCH_TRACE_URL"), l.TraceID))
	row("Issued", fmtTime(l.IssuedAt))
	row("Expires", fmtTime(l.ExpiresAt))
	row("Max expires", fmtTime(l.MaxExpiresAt))
	if !l.EndedAt.IsZero() {
		row("Ended", fmtTime(l.EndedAt))
	}
	row("Revoke reason", l.RevokeReason)
	row("Last error", l.LastError)
	row("Token accessor", l.Refs.TokenAccessor)
	row("Vault policy", l.Refs.Policy)
	row("Vault lease", l.Refs.VaultLeaseID)
	row("Certificate serial", l.Refs.Serial)
	return tw.Flush()
}

// shortVersion is a template version as lease list prints it: sha256:
// and 12 hex digits, which latch revoke --version takes.
func shortVersion(v string) string {
	const short = len("sha256:") + 12
	if len(v) > short {
		return v[:short]
	}
	return v
}

func revokeCommand() *cli.Command {
	return operatorCommand("revoke", "revoke one lease, or every lease of an agent, task or template, or all (revoker)",
		"latch revoke LEASE | --agent ID | --task T | --template NAME [--version HASH] | --all  --reason \"...\" [--yes] [-o table|json]",
		"Queues the revocation of leases: latch revokes them in Vault, retrying until\n"+
			"Vault confirms. One lease by its ID, or in bulk: every active lease of an\n"+
			"agent, of a task, of a template (every version of it, or the one --version\n"+
			"names: the hash latch lease list and lease show print), or all of them.\n\n"+
			"A bulk revoke first asks the server what it would hit (a dry run), shows it,\n"+
			"and asks for confirmation on the terminal; --yes skips the question, and is\n"+
			"required when stdin is not a terminal.\n\n"+
			"Flags may follow the lease ID: latch revoke 01J... --reason \"leaked in CI log\".",
		[]cli.Flag{
			&cli.StringFlag{Name: "agent", Usage: "revoke every active lease of this agent (SPIFFE `ID`)"},
			&cli.StringFlag{Name: "task", Usage: "revoke every active lease of this `TASK`"},
			&cli.StringFlag{Name: "template", Usage: "revoke every active lease issued under any version of the template `NAME`"},
			&cli.StringFlag{Name: "version", Usage: "with --template: only leases of this template version `HASH` (sha256:..., or the prefix lease list prints)"},
			&cli.BoolFlag{Name: "all", Usage: "revoke every active lease"},
			reasonFlag("why: goes to the audit log"),
			&cli.BoolFlag{Name: "yes", Aliases: []string{"y"}, Usage: "do not ask before a bulk revoke"},
			outputFlag("table", "json"),
		}, runRevoke)
}

func runRevoke(c *cli.Context, args []string, connect connector) error {
	req := api.RevokeRequest{Agent: c.String("agent"), Task: c.String("task"), Template: c.String("template"), Version: c.String("version"), All: c.Bool("all")}
	if len(args) > 1 {
		return usageErrorf("expected at most one lease ID, got %q", args)
	}
	if len(args) == 1 {
		req.Lease = args[0]
	}
	if req.Selectors() != 1 {
		return usageErrorf("name exactly one of: a lease ID, --agent, --task, --template, --all")
	}
	if req.Version != "" && req.Template == "" {
		return usageErrorf("--version narrows --template: name the template too (--template NAME --version HASH)")
	}
	reason, err := requireReason(c)
	if err != nil {
		return err
	}
	req.Reason = reason
	cl, err := connect()
	if err != nil {
		return err
	}
	if req.Lease == "" {
		dry := req
		dry.DryRun = true
		ctx, cancel := callCtx(c)
		plan, err := cl.Revoke(ctx, dry)
		cancel()
		if err != nil {
			return err
		}
		if plan.Count == 0 {
			if c.String("output") == "json" {
				return writeJSON(c.App.Writer, api.RevokeResponse{Count: 0})
			}
			fmt.Fprintln(c.App.Writer, "no active lease matches; nothing to revoke")
			return nil
		}
		if !c.Bool("yes") {
			showPlan(c.App.ErrWriter, plan)
			if !isTerminal(c.App.Reader) {
				return usageErrorf("refusing to revoke %d lease(s) without confirmation: stdin is not a terminal; add --yes", plan.Count)
			}
			fmt.Fprintf(c.App.ErrWriter, "Revoke these %d lease(s)? Type yes to confirm: ", plan.Count)
			line, _ := bufio.NewReader(c.App.Reader).ReadString('\n')
			if strings.TrimSpace(strings.ToLower(line)) != "yes" {
				return fmt.Errorf("not confirmed; nothing revoked")
			}
		}
	}
	// Timed from here: the operator may take a while to confirm.
	ctx, cancel := callCtx(c)
	defer cancel()
	res, err := cl.Revoke(ctx, req)
	if err != nil {
		return err
	}
	if c.String("output") == "json" {
		return writeJSON(c.App.Writer, res)
	}
	fmt.Fprintf(c.App.Writer, "queued %d lease(s) for revocation\n", res.Count)
	return nil
}

// showPlan prints what a bulk revoke will hit.
func showPlan(w io.Writer, plan *api.RevokeResponse) {
	fmt.Fprintf(w, "This revokes %d active lease(s):\n", plan.Count)
	tw := newTable(w)
	fmt.Fprintln(tw, "  ID\tAGENT\tTASK\tEXPIRES")
	const shown = 20
	for i, l := range plan.Leases {
		if i == shown {
			fmt.Fprintf(tw, "  ... and %d more\t\t\t\n", plan.Count-shown)
			break
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", l.ID, l.Agent, l.Task, fmtTime(l.ExpiresAt))
	}
	tw.Flush()
}

func agentCommand() *cli.Command {
	action := func(verb string) remoteAction {
		return func(c *cli.Context, args []string, connect connector) error {
			return runAgentAction(c, args, connect, verb)
		}
	}
	reason := func() []cli.Flag {
		return []cli.Flag{reasonFlag("why: goes to the audit log"), outputFlag("table", "json")}
	}
	return &cli.Command{
		Name:  "agent",
		Usage: "list agents; pause, quarantine or resume one (viewer; revoker to act)",
		Subcommands: []*cli.Command{
			operatorCommand("list", "the agent inventory: configured entries and known agents",
				"latch agent list [-o table|json]",
				"Shows the agents: entries of the configuration (pattern, owner, templates,\n"+
					"rate, budget) and every agent latch knows: its state, who set it and why,\n"+
					"and when it last got a credential.",
				[]cli.Flag{outputFlag("table", "json")}, runAgentList),
			operatorCommand("pause", "deny an agent's requests until resumed",
				"latch agent pause ID --reason \"...\"",
				"Pauses the agent (its SPIFFE ID): every request it makes is denied until\n"+
					"latch agent resume. Its live leases stay; quarantine revokes them too.",
				reason(), action(api.ActionPause)),
			operatorCommand("quarantine", "pause an agent and revoke every live lease it holds",
				"latch agent quarantine ID --reason \"...\"",
				"Pauses the agent and queues the revocation of every live lease it holds.\n"+
					"Use it when an agent misbehaves or its identity may be compromised.",
				reason(), action(api.ActionQuarantine)),
			operatorCommand("resume", "lift a pause or quarantine",
				"latch agent resume ID --reason \"...\"",
				"Lets the agent ask for credentials again.",
				reason(), action(api.ActionResume)),
		},
	}
}

func runAgentList(c *cli.Context, args []string, connect connector) error {
	if len(args) > 0 {
		return usageErrorf("unexpected argument %q: agent list takes only flags", args[0])
	}
	cl, err := connect()
	if err != nil {
		return err
	}
	ctx, cancel := callCtx(c)
	defer cancel()
	res, err := cl.Agents(ctx)
	if err != nil {
		return err
	}
	if c.String("output") == "json" {
		return writeJSON(c.App.Writer, res)
	}
	tw := newTable(c.App.Writer)
	fmt.Fprintln(tw, "AGENT\tSTATE\tOWNER\tLAST USED\tCHANGED BY\tREASON")
	for _, a := range res.Agents {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", a.ID, a.State, dash(a.Owner), fmtTime(a.LastUsed), dash(a.Actor), dash(oneLine(a.Reason, 40)))
	}
	fmt.Fprintln(tw, "\t\t\t\t\t")
	fmt.Fprintln(tw, "ENTRY\tOWNER\tTEMPLATES\tRATE\tMAX ACTIVE\t")
	for _, e := range res.Entries {
		maxActive := "-"
		if e.MaxActive > 0 {
			maxActive = fmt.Sprint(e.MaxActive)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t\n", e.Pattern, e.Owner, strings.Join(e.Templates, ","), dash(e.Rate), maxActive)
	}
	return tw.Flush()
}

func runAgentAction(c *cli.Context, args []string, connect connector, verb string) error {
	id, err := oneArg(args, "agent SPIFFE ID")
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
	var a *api.Agent
	switch verb {
	case api.ActionPause:
		a, err = cl.PauseAgent(ctx, id, reason)
	case api.ActionQuarantine:
		a, err = cl.QuarantineAgent(ctx, id, reason)
	default:
		a, err = cl.ResumeAgent(ctx, id, reason)
	}
	if err != nil {
		return err
	}
	if c.String("output") == "json" {
		return writeJSON(c.App.Writer, api.AgentResponse{Agent: *a})
	}
	fmt.Fprintf(c.App.Writer, "agent %s is now %s\n", a.ID, a.State)
	return nil
}

func freezeCommand() *cli.Command {
	flags := func() []cli.Flag {
		return []cli.Flag{reasonFlag("why: goes to the audit log"), outputFlag("table", "json")}
	}
	return &cli.Command{
		Name:  "freeze",
		Usage: "start or end the global emergency freeze (revoker)",
		Subcommands: []*cli.Command{
			operatorCommand("start", "deny every credential request until the freeze ends",
				"latch freeze start --reason \"...\"",
				"Starts the global emergency freeze: every task is denied, whatever its\n"+
					"template says, until latch freeze end. Live leases are not revoked\n"+
					"(latch revoke --all does that).",
				flags(), func(c *cli.Context, args []string, connect connector) error { return runFreeze(c, args, connect, true) }),
			operatorCommand("end", "end the global emergency freeze",
				"latch freeze end --reason \"...\"",
				"Ends the global emergency freeze; templates' own freeze windows still apply.",
				flags(), func(c *cli.Context, args []string, connect connector) error {
					return runFreeze(c, args, connect, false)
				}),
		},
	}
}

func runFreeze(c *cli.Context, args []string, connect connector, on bool) error {
	if len(args) > 0 {
		return usageErrorf("unexpected argument %q: freeze takes only --reason", args[0])
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
	f, err := cl.Freeze(ctx, on, reason)
	if err != nil {
		return err
	}
	if c.String("output") == "json" {
		return writeJSON(c.App.Writer, api.FreezeResponse{Freeze: *f})
	}
	if f.Active {
		fmt.Fprintf(c.App.Writer, "global freeze on since %s: every credential request is denied\n", fmtTime(f.Since))
	} else {
		fmt.Fprintln(c.App.Writer, "global freeze off")
	}
	return nil
}

// kvString prints a map as k=v pairs in key order.
func kvString(m map[string]string) string {
	keys := sortedKeys(m)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, " ")
}

// oneLine shortens s to one line of at most n runes for a table cell.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}
