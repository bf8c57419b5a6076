package main

import (
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/latchbroker/latch/broker/api"
)

func reportCommand() *cli.Command {
	return operatorCommand("report", "the grants inventory: owners, last use, unused grants (viewer)",
		"latch report [--unused 30d] [-o table|json]",
		"Lists every grant of the policy (an agents: entry and a template it may\n"+
			"use) with the entry's owner, when latch first saw it granted, when it was\n"+
			"last used and by which agent, and how many agents used it.\n\n"+
			"--unused 30d keeps the grants nobody used in the last 30 days (never used\n"+
			"counts from when it was granted): the candidates for removal from the\n"+
			"config.\n\n"+
			"  latch report --unused 30d -o json | jq -r '.grants[] | \"\\(.owner) \\(.agent) \\(.template)\"'",
		[]cli.Flag{
			&cli.StringFlag{Name: "unused", Usage: "only the grants unused for at least `AGE`: whole days (30d) or a duration (12h)"},
			outputFlag("table", "json"),
		}, runReport)
}

func runReport(c *cli.Context, args []string, connect connector) error {
	if len(args) > 0 {
		return usageErrorf("unexpected argument %q: report takes only flags", args[0])
	}
	var unused time.Duration
	if s := c.String("unused"); s != "" {
		var err error
		if unused, err = api.ParseAge(s); err != nil {
			return usageErrorf("--unused: %v", err)
		}
	}
	cl, err := connect()
	if err != nil {
		return err
	}
	ctx, cancel := callCtx(c)
	defer cancel()
	res, err := cl.Report(ctx, unused)
	if err != nil {
		return err
	}
	if c.String("output") == "json" {
		return writeJSON(c.App.Writer, res)
	}
	tw := newTable(c.App.Writer)
	fmt.Fprintln(tw, "AGENT\tOWNER\tTEMPLATE\tLAST USED\tBY\tAGENTS\tIDLE\tGRANTED")
	for _, g := range res.Grants {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", g.Agent, dash(g.Owner), g.Template, fmtTime(g.LastUsed),
			dash(g.LastAgent), g.Agents, fmtAge(g.Idle.D()), fmtTime(g.Since))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	switch {
	case unused > 0 && len(res.Grants) == 0:
		fmt.Fprintf(c.App.ErrWriter, "no grant unused for %s or more: a grant counts from the day it was granted (or last used), "+
			"so a new one is listed only once it has gone unused that long\n", fmtAge(unused))
	case unused > 0:
		fmt.Fprintf(c.App.ErrWriter, "%d grant(s) unused for %s or more\n", len(res.Grants), fmtAge(unused))
	default:
		fmt.Fprintf(c.App.ErrWriter, "%d grant(s)\n", len(res.Grants))
	}
	return nil
}

// fmtAge prints an age in whole days from a day on ("40d"), else as a
// rounded duration ("3h0m0s" → "3h").
func fmtAge(d time.Duration) string {
	const day = 24 * time.Hour
	switch {
	case d >= day:
		return fmt.Sprintf("%dd", d/day)
	case d >= time.Hour:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d >= time.Minute:
		return fmt.Sprintf("%dm", d/time.Minute)
	default:
		return fmt.Sprintf("%ds", d/time.Second)
	}
}
