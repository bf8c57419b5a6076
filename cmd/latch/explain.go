package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/latchbroker/latch/templates"
)

func explainCommand() *cli.Command {
	return &cli.Command{
		Name:      "explain",
		Usage:     "dry-run a credential request against the config, offline",
		UsageText: "latch explain --config FILE --agent ID --task T [--param k=v]... [--at RFC3339] [--ttl D] [-o json]",
		Description: "Loads the config as latch check does and evaluates one request without a\n" +
			"server, Vault or store: the outcome (allow, deny, approval_required), risk tier\n" +
			"and why, TTL, what would be minted (rendered policy, path, certificate names),\n" +
			"and every rule checked. --at evaluates at another time, to see freeze windows.\n" +
			"Exit status is 0 whatever the outcome; read it from the output (-o json).",
		Flags: []cli.Flag{
			configFlagFor(),
			&cli.StringFlag{Name: "agent", Usage: "the requesting agent's SPIFFE ID", Required: true},
			&cli.StringFlag{Name: "task", Usage: "the task template name", Required: true},
			&cli.GenericFlag{Name: "param", Aliases: []string{"p"}, Usage: "a parameter as key=value; repeat for more", Value: &paramFlag{}},
			&cli.StringFlag{Name: "at", Usage: "evaluate at this RFC 3339 time instead of now, such as 2026-12-29T10:00:00+01:00"},
			&cli.DurationFlag{Name: "ttl", Usage: "requested lease TTL (default: the template's ttl)"},
			&cli.StringFlag{Name: "state", Usage: "the agent's state: active, paused or quarantined", Value: string(templates.AgentActive)},
			&cli.BoolFlag{Name: "global-freeze", Usage: "evaluate as if a global emergency freeze were on"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "output format: table or json", Value: "table"},
		},
		Action: runExplain,
	}
}

// paramFlag collects repeated --param key=value flags. It does not split on
// commas, unlike cli.StringSliceFlag, because values may contain them.
type paramFlag struct {
	m map[string]string
}

func (p *paramFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("expected key=value, got %q", s)
	}
	if p.m == nil {
		p.m = map[string]string{}
	}
	if _, dup := p.m[k]; dup {
		return fmt.Errorf("parameter %q given twice", k)
	}
	p.m[k] = v
	return nil
}

func (p *paramFlag) String() string {
	if p == nil || len(p.m) == 0 {
		return ""
	}
	parts := make([]string, 0, len(p.m))
	for _, k := range sortedKeys(p.m) {
		parts = append(parts, k+"="+p.m[k])
	}
	return strings.Join(parts, ",")
}

func runExplain(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	out := c.String("output")
	if out != "table" && out != "json" {
		return fmt.Errorf("--output: expected table or json, got %q", out)
	}
	now := time.Now()
	if at := c.String("at"); at != "" {
		t, err := time.Parse(time.RFC3339, at)
		if err != nil {
			return fmt.Errorf("--at: expected an RFC 3339 time such as 2026-12-29T10:00:00+01:00, got %q", at)
		}
		now = t
	}
	state := templates.AgentState(c.String("state"))
	switch state {
	case templates.AgentActive, templates.AgentPaused, templates.AgentQuarantined:
	default:
		return fmt.Errorf("--state: expected active, paused or quarantined, got %q", state)
	}
	var params map[string]string
	if pf, ok := c.Generic("param").(*paramFlag); ok {
		params = pf.m
	}
	cfg, err := LoadConfig(c.String("config"))
	if err != nil {
		return printConfigErrors(c, err)
	}
	d := cfg.Policy.Evaluate(templates.Request{
		Agent:        c.String("agent"),
		Task:         c.String("task"),
		Params:       params,
		TTL:          c.Duration("ttl"),
		Now:          now,
		AgentState:   state,
		GlobalFreeze: c.Bool("global-freeze"),
	})
	if out == "json" {
		return writeDecisionJSON(c.App.Writer, d)
	}
	return writeDecisionTable(c.App.Writer, d)
}

// decisionJSON is a Decision with durations as Go duration strings and
// seconds, rather than nanoseconds.
type decisionJSON struct {
	templates.Decision
	TTL           string `json:"ttl"`
	TTLSeconds    int64  `json:"ttl_seconds"`
	MaxTTL        string `json:"max_ttl"`
	MaxTTLSeconds int64  `json:"max_ttl_seconds"`
}

func writeDecisionJSON(w io.Writer, d templates.Decision) error {
	return writeJSON(w, decisionJSON{
		Decision: d,
		TTL:      d.TTL.String(), TTLSeconds: int64(d.TTL / time.Second),
		MaxTTL: d.MaxTTL.String(), MaxTTLSeconds: int64(d.MaxTTL / time.Second),
	})
}

func writeDecisionTable(w io.Writer, d templates.Decision) error {
	tw := newTable(w)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s\t%s\n", k, v)
		}
	}
	row("outcome", string(d.Outcome))
	agent := d.Agent
	if d.AgentPattern != "" {
		agent += fmt.Sprintf(" (entry %s, owner %s)", d.AgentPattern, d.Owner)
	}
	row("agent", agent)
	row("task", strings.TrimSpace(d.Task+" "+d.TemplateVersion))
	if d.Backend != "" {
		row("backend", fmt.Sprintf("%s (%s)", d.Backend, d.BackendType))
	}
	row("params", kvString(d.Params))
	if d.Tier != "" {
		row("tier", fmt.Sprintf("%s (%s)", d.Tier, strings.Join(d.TierWhy, "; ")))
	}
	if d.Approvals > 0 {
		row("approvals", fmt.Sprintf("%d", d.Approvals))
	}
	if d.TTL > 0 {
		row("ttl", fmt.Sprintf("%s (max %s)", explainDuration(d.TTL), explainDuration(d.MaxTTL)))
	}
	row("evaluated at", d.EvaluatedAt.Format(time.RFC3339))
	if !d.NextAllowedAt.IsZero() {
		row("next allowed at", d.NextAllowedAt.Format(time.RFC3339))
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	if len(d.Reasons) > 0 {
		fmt.Fprintln(w, "\nreasons:")
		for _, r := range d.Reasons {
			fmt.Fprintf(tw, "  %s\t%s\n", r.Code, r.Message)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}

	r := d.Rendered
	if r.Path != "" || r.Policy != "" || r.Names != nil || len(r.Vars) > 0 {
		fmt.Fprintln(w, "\nwould mint:")
		if r.Path != "" {
			fmt.Fprintf(tw, "  path\t%s\n", r.Path)
		}
		if len(r.Vars) > 0 {
			fmt.Fprintf(tw, "  vars\t%s\n", kvString(r.Vars))
		}
		if n := r.Names; n != nil {
			fmt.Fprintf(tw, "  common_name\t%s\n", n.CommonName)
			for _, l := range []struct {
				k string
				v []string
			}{{"alt_names", n.AltNames}, {"uri_sans", n.URISANs}, {"ip_sans", n.IPSANs}} {
				if len(l.v) > 0 {
					fmt.Fprintf(tw, "  %s\t%s\n", l.k, strings.Join(l.v, ", "))
				}
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if r.Policy != "" {
			fmt.Fprintln(w, "  policy:")
			for _, line := range strings.Split(strings.TrimRight(r.Policy, "\n"), "\n") {
				fmt.Fprintf(w, "    %s\n", line)
			}
		}
	}

	fmt.Fprintln(w, "\ntrace:")
	fmt.Fprintln(tw, "  RULE\tRESULT\tDETAIL")
	for _, s := range d.Trace {
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", s.Rule, s.Result, s.Detail)
	}
	return tw.Flush()
}

// explainDuration prints 15m rather than 15m0s.
func explainDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
