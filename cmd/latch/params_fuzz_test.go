package main

import (
	"regexp/syntax"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/latchbroker/latch/templates"
)

// exampleParam is one parameter of one example template, with a granted
// agent and valid values for the template's other parameters.
type exampleParam struct {
	task, agent string
	p           templates.Param
	others      map[string]string
}

// request asks for the task with value for the parameter.
func (ep exampleParam) request(value string, now time.Time) templates.Request {
	params := map[string]string{ep.p.Name: value}
	for k, v := range ep.others {
		params[k] = v
	}
	return templates.Request{Agent: ep.agent, Task: ep.task, Params: params, Now: now}
}

// exampleParams lists every parameter of examples/templates, loaded the
// way the server loads them (backend checks wired in by the catalog).
func exampleParams(tb testing.TB) (*Config, []exampleParam) {
	tb.Helper()
	cfg, err := LoadConfig(exampleConfigPath)
	if err != nil {
		tb.Fatal(err)
	}
	var out []exampleParam
	for _, tm := range cfg.Policy.Templates() {
		agent := grantedAgent(tb, cfg.Policy, tm.Name)
		for _, p := range tm.Params {
			ep := exampleParam{task: tm.Name, agent: agent, p: p, others: map[string]string{}}
			for _, o := range tm.Params {
				if o.Name != p.Name {
					ep.others[o.Name] = sampleValue(tb, o)
				}
			}
			out = append(out, ep)
		}
	}
	if len(out) == 0 {
		tb.Fatal("the examples declare no parameters")
	}
	return cfg, out
}

// grantedAgent is an agent ID whose agents: entry grants task.
func grantedAgent(tb testing.TB, p *templates.Policy, task string) string {
	for _, a := range p.Agents() {
		switch {
		case !a.Granted(task):
		case a.IsPrefix():
			return strings.TrimSuffix(a.Pattern, "*") + "fuzz"
		default:
			return a.Pattern
		}
	}
	tb.Fatalf("no agent is granted %s", task)
	return ""
}

// sampleValue is a valid value of p: its default, its first enum value, or
// the shortest string its pattern's first alternatives spell.
func sampleValue(tb testing.TB, p templates.Param) string {
	switch {
	case p.HasDefault:
		return p.Default
	case len(p.Enum) > 0:
		return p.Enum[0]
	}
	re, err := syntax.Parse(p.Pattern, syntax.Perl)
	if err != nil {
		tb.Fatal(err)
	}
	return spell(re)
}

func spell(re *syntax.Regexp) string {
	var b strings.Builder
	switch re.Op {
	case syntax.OpLiteral:
		b.WriteString(string(re.Rune))
	case syntax.OpCharClass:
		b.WriteRune(re.Rune[0])
	case syntax.OpAnyChar, syntax.OpAnyCharNotNL:
		b.WriteByte('x')
	case syntax.OpCapture, syntax.OpPlus, syntax.OpAlternate:
		b.WriteString(spell(re.Sub[0]))
	case syntax.OpRepeat:
		b.WriteString(strings.Repeat(spell(re.Sub[0]), re.Min))
	case syntax.OpConcat:
		for _, s := range re.Sub {
			b.WriteString(spell(s))
		}
	}
	return b.String()
}

// allowedValue is the rule of README's template reference, written out
// again independently of templates: letters, digits and . _ : @ -, plus /
// when the parameter opts in, and no empty, "." or ".." segment.
func allowedValue(v string, allow []string) bool {
	slash := slices.Contains(allow, "slash")
	for _, r := range v {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' ||
			strings.ContainsRune("._:@-", r) || slash && r == '/'
		if !ok {
			return false
		}
	}
	for seg := range strings.SplitSeq(v, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return false
		}
	}
	return true
}

// FuzzExampleParams fuzzes the value of every parameter of the example
// templates. Property: any value Evaluate does not deny holds only the
// parameter's allowed characters, and what it renders passes the
// backend's own check, the one Mint runs; so a value that reaches an
// approver or a backend is one the backend accepts.
func FuzzExampleParams(f *testing.F) {
	cfg, params := exampleParams(f)
	for i := range params {
		for _, v := range []string{"42", "ord_abcdefghij", "eu", "../../sys/policy/x", "eu/../x", "eu/extra/segments",
			"a\u202Eb", "a,b", "%2e%2e", "a\x00", "a\nb", "."} {
			f.Add(uint16(i), v)
		}
	}
	// A Tuesday morning outside every deny window of the examples; with
	// valid values, every task is allowed or goes to approval.
	now := time.Date(2026, 3, 10, 10, 0, 0, 0, time.UTC)
	for _, ep := range params {
		if d := cfg.Policy.Evaluate(ep.request(sampleValue(f, ep.p), now)); d.Outcome == templates.Deny {
			f.Fatalf("%s with sample values is denied: %+v", ep.task, d.Reasons)
		}
	}
	f.Fuzz(func(t *testing.T, which uint16, value string) {
		ep := params[int(which)%len(params)]
		d := cfg.Policy.Evaluate(ep.request(value, now))
		if d.Outcome == templates.Deny {
			return
		}
		if !allowedValue(value, ep.p.Allow) {
			t.Fatalf("%s: %s=%q was not denied (%s)", ep.task, ep.p.Name, value, d.Outcome)
		}
		check := cfg.backends[d.Backend].Template.Check
		if check == nil {
			t.Fatalf("backend %s has no check wired in", d.Backend)
		}
		if err := check.CheckRendered(d.Rendered); err != nil {
			t.Fatalf("%s: %s=%q reached %s, which the backend refuses: %v", ep.task, ep.p.Name, value, d.Outcome, err)
		}
	})
}
