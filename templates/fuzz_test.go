package templates

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// Seeds live in testdata/fuzz/<FuzzName>/. Run one target with, e.g.:
//
//	go test -run XXX -fuzz FuzzLoadTemplate -fuzztime 60s ./templates/

// FuzzLoadTemplate loads arbitrary bytes as a template next to the testdata
// policy: Load must never panic, and a template that loads must evaluate.
func FuzzLoadTemplate(f *testing.F) {
	pc := readTestPolicy(f)
	base := readTestTemplates(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		files := append(append([]File(nil), base...), File{Name: "fuzz.yaml", Data: data})
		p, err := Load(Source{Policy: pc, Templates: files, Backends: testBackends})
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		for _, tm := range p.Templates() {
			params := map[string]string{}
			for _, pr := range tm.Params {
				if len(pr.Enum) > 0 {
					params[pr.Name] = pr.Enum[0]
				}
			}
			req := Request{Agent: opsBot, Task: tm.Name, Params: params, Now: time.Date(2026, 12, 15, 9, 0, 0, 0, time.UTC)}
			d1, d2 := p.Evaluate(req), p.Evaluate(req)
			if !reflect.DeepEqual(d1, d2) {
				t.Fatalf("not deterministic for %s", tm.Name)
			}
		}
	})
}

// FuzzLoadPolicy loads arbitrary bytes as the policy sections of the config.
func FuzzLoadPolicy(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		pc, err := ParsePolicy("fuzz.yaml", data)
		if err != nil {
			return
		}
		p, err := Load(Source{Policy: pc, Templates: []File{minimalTemplate}, Backends: testBackends})
		if err != nil {
			return
		}
		at := time.Date(2026, 12, 29, 10, 0, 0, 0, time.UTC)
		for _, name := range p.WindowNames() {
			w, _ := p.Window(name)
			active := w.Active(at)
			if n, ok := w.NextChange(at); ok {
				if n.Before(at) {
					t.Fatalf("%s: NextChange(%s) = %s is in the past", name, at, n)
				}
				if w.Active(n) == active {
					t.Fatalf("%s: nothing changes at NextChange(%s) = %s", name, at, n)
				}
			}
		}
		for _, a := range p.Agents() {
			id := strings.TrimSuffix(a.Pattern, "*") + "x"
			p.Evaluate(Request{Agent: id, Task: "nightly-report", Now: at})
		}
	})
}

// FuzzEvaluate evaluates random requests against the testdata policy: no
// panic, the same input gives the same decision, and the decision is
// internally consistent. params is "k=v&k=v".
func FuzzEvaluate(f *testing.F) {
	p := loadTestPolicy(f)
	f.Fuzz(func(t *testing.T, agent, task, params string, ttlSeconds, unix int64, state uint8, freeze bool) {
		req := Request{Agent: agent, Task: task, TTL: time.Duration(ttlSeconds) * time.Second,
			Now: time.Unix(unix, 0), AgentState: []AgentState{"", AgentActive, AgentPaused, AgentQuarantined, "bogus"}[state%5], GlobalFreeze: freeze}
		if params != "" {
			req.Params = map[string]string{}
			for _, kv := range strings.Split(params, "&") {
				k, v, _ := strings.Cut(kv, "=")
				req.Params[k] = v
			}
		}
		d := p.Evaluate(req)
		if again := p.Evaluate(req); !reflect.DeepEqual(d, again) {
			t.Fatalf("not deterministic:\n%+v\n%+v", d, again)
		}
		switch d.Outcome {
		case Allow:
			if len(d.Reasons) != 0 || d.Approvals != 0 {
				t.Fatalf("allow with reasons %+v", d)
			}
		case Deny:
			if len(d.Reasons) == 0 {
				t.Fatalf("deny without reasons %+v", d)
			}
		case ApprovalRequired:
			if d.Approvals < 1 || len(d.Reasons) == 0 {
				t.Fatalf("approval without approvals %+v", d)
			}
		default:
			t.Fatalf("outcome %q", d.Outcome)
		}
		if d.TTL > d.MaxTTL {
			t.Fatalf("ttl %s above max %s", d.TTL, d.MaxTTL)
		}
		if d.Outcome != Deny {
			// Everything that was allowed was checked: a known agent, a
			// granted task, valid parameters.
			a, ok := p.Agent(agent)
			if !ok || !a.Granted(task) || d.Params == nil || freeze {
				t.Fatalf("%s for an invalid request: %+v", d.Outcome, d)
			}
		}
		if d.Params == nil && (d.Rendered.Path != "" || d.Rendered.Policy != "" || d.Rendered.Names != nil) {
			t.Fatal("rendered with invalid parameters")
		}
	})
}
