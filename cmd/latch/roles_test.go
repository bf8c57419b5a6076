package main

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/brokertest"
	"github.com/latchbroker/latch/broker/httpapi"
	"github.com/latchbroker/latch/templates"
)

// rolesTable is README's "Roles: who may do what": for each row (its first
// cell without backticks), the routes and commands it names.
type rolesRow struct{ routes, commands []string }

var codeSpan = regexp.MustCompile("`([^`]+)`")

func readRolesTable(t *testing.T) map[string]rolesRow {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const heading = "\n### Roles: who may do what\n"
	text := string(b)
	i := strings.Index(text, heading)
	if i < 0 {
		t.Fatalf("README.md has no %q section", strings.TrimSpace(heading))
	}
	text = text[i+len(heading):]
	text = text[:strings.Index(text, "\n#")]
	rows := map[string]rolesRow{}
	for line := range strings.SplitSeq(text, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) != 5 || strings.HasPrefix(cells[1], "---") || strings.TrimSpace(cells[1]) == "who" {
			continue
		}
		who := strings.Trim(strings.TrimSpace(cells[1]), "`")
		var r rolesRow
		for _, m := range codeSpan.FindAllStringSubmatch(cells[2], -1) {
			r.routes = append(r.routes, m[1])
		}
		for _, m := range codeSpan.FindAllStringSubmatch(cells[3], -1) {
			r.commands = append(r.commands, m[1])
		}
		rows[who] = r
	}
	return rows
}

// routesOf expands a row's routes: a route named as-is, a role's name
// standing for that row's routes.
func routesOf(rows map[string]rolesRow, who string) []string {
	var out []string
	for _, s := range rows[who].routes {
		if _, isRow := rows[s]; isRow {
			out = append(out, routesOf(rows, s)...)
		} else if strings.Contains(s, " /") {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// TestREADME_RolesTable: the roles table says, route by route, exactly
// what broker.Authorize (and, for approvals, broker.ReadsApprovals) lets
// each role, the admin socket and an agent do; and every command it names
// is one of latch's.
func TestREADME_RolesTable(t *testing.T) {
	rows := readRolesTable(t)
	p := brokertest.LoadPolicy(t, brokertest.Policy, brokertest.Templates)
	callers := map[string]string{
		"viewer":                  "spiffe://example.org/ops/vera",
		"approver":                "spiffe://example.org/ops/abe",
		"revoker":                 "spiffe://example.org/ops/rex",
		"admin":                   "spiffe://example.org/ops/ada",
		"the admin socket":        broker.AdminSocketActor,
		"an agent, with its SVID": "spiffe://example.org/agent/ticket-bot",
	}
	if len(rows) != len(callers) {
		t.Fatalf("README's roles table has rows %v, want one for each of %v", keys(rows), keys(callers))
	}
	for who, id := range callers {
		var want []string
		for _, r := range httpapi.Routes {
			if mayCall(p, id, r) {
				want = append(want, r.Pattern)
			}
		}
		slices.Sort(want)
		if got := routesOf(rows, who); !slices.Equal(got, want) {
			t.Errorf("README says %s may call\n  %v\nthe server lets it call\n  %v", who, got, want)
		}
	}
	app := newApp()
	for who, row := range rows {
		for _, c := range row.commands {
			words := strings.Fields(c)
			if words[0] != "latch" {
				continue
			}
			cmd := app.Command(words[1])
			for _, w := range words[2:] {
				if cmd == nil || strings.HasPrefix(w, "-") {
					break
				}
				cmd = cmd.Command(w)
			}
			if cmd == nil {
				t.Errorf("README's roles table names %q for %s: latch has no such command", c, who)
			}
		}
	}
}

// mayCall reports whether id gets past the route's authorization.
// GET /v1/whoami, open to anyone, is in no row; the agent routes, open to
// any SVID (the agents: list then decides), are in the agent's only.
func mayCall(pol *templates.Policy, id string, r httpapi.Route) bool {
	_, isOperator := pol.Operator(id)
	switch {
	case r.Needs == "" || r.Pattern == "GET /v1/whoami":
		return false
	case r.Needs == broker.ActionAgent && isOperator:
		return false
	case r.Needs == broker.ActionIdentified: // the approvals: an agent reads its own
		if id == broker.AdminSocketActor {
			return true
		}
		op, isOperator := pol.Operator(id)
		return !isOperator || broker.ReadsApprovals(op)
	}
	return broker.Authorize(pol, id, r.Needs, r.Pattern) == nil
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
