package templates

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

const (
	reportBot  = "spiffe://example.org/agent/report-bot"
	special    = "spiffe://example.org/agent/report-special"
	opsBot     = "spiffe://example.org/agent/ops/deployer"
	stranger   = "spiffe://example.org/agent/other"
	openTime   = "2026-12-15T10:00:00+01:00" // Tuesday, business hours, no billing close
	eveningT   = "2026-12-15T20:00:00+01:00" // Tuesday, outside business hours
	billingT   = "2026-12-29T10:00:00+01:00" // inside billing-close
	maintenceT = "2026-06-10T12:00:00Z"      // inside maintenance (absolute)
)

// want describes the parts of a decision a case checks.
type want struct {
	outcome   Outcome
	codes     []ReasonCode // reasons, in order
	tier      string
	approvals int
	ttl       time.Duration
	next      string // NextAllowedAt, RFC 3339; "" = zero
	path      string
	policy    string // substring of the rendered policy
	rule      string // a trace rule that must appear…
	result    Result // …with this result
}

func TestEvaluate(t *testing.T) {
	p := loadTestPolicy(t)
	tests := []struct {
		name string
		req  Request
		want want
	}{
		{"Allow", Request{Agent: reportBot, Task: "nightly-report", Params: map[string]string{"region": "eu"}, Now: ts(t, openTime)},
			want{outcome: Allow, tier: TierLow, ttl: 10 * time.Minute, path: "database/creds/report-eu", rule: "grant", result: ResultPass}},
		{"EscalateRaisesTier", Request{Agent: reportBot, Task: "nightly-report", Params: map[string]string{"region": "us"}, Now: ts(t, openTime)},
			want{outcome: Allow, tier: TierMedium, ttl: 10 * time.Minute, path: "database/creds/report-us", rule: "escalate[0]", result: ResultRaise}},
		{"ErrUnknownAgent", Request{Agent: stranger, Task: "nightly-report", Params: map[string]string{"region": "eu"}, Now: ts(t, openTime)},
			want{outcome: Deny, codes: []ReasonCode{ReasonUnknownAgent}, tier: TierLow, ttl: 10 * time.Minute, rule: "grant", result: ResultSkip}},
		{"ErrUnknownAgent/not a SPIFFE ID", Request{Agent: "spiffe://example.org/agent/report-x/../admin", Task: "nightly-report", Params: map[string]string{"region": "eu"}, Now: ts(t, openTime)},
			want{outcome: Deny, codes: []ReasonCode{ReasonUnknownAgent}, tier: TierLow, ttl: 10 * time.Minute, rule: "agent", result: ResultDeny}},
		{"ErrUnknownAgent/foreign trust domain", Request{Agent: "spiffe://evil.org/agent/report-bot", Task: "nightly-report", Params: map[string]string{"region": "eu"}, Now: ts(t, openTime)},
			want{outcome: Deny, codes: []ReasonCode{ReasonUnknownAgent}, tier: TierLow, ttl: 10 * time.Minute, rule: "agent", result: ResultDeny}},
		{"ErrAgentPaused", Request{Agent: reportBot, Task: "nightly-report", Params: map[string]string{"region": "eu"}, Now: ts(t, openTime), AgentState: AgentPaused},
			want{outcome: Deny, codes: []ReasonCode{ReasonAgentPaused}, tier: TierLow, ttl: 10 * time.Minute, rule: "agent_state", result: ResultDeny}},
		{"ErrAgentQuarantined", Request{Agent: reportBot, Task: "nightly-report", Params: map[string]string{"region": "eu"}, Now: ts(t, openTime), AgentState: AgentQuarantined},
			want{outcome: Deny, codes: []ReasonCode{ReasonAgentQuarantined}, tier: TierLow, ttl: 10 * time.Minute, rule: "agent_state", result: ResultDeny}},
		{"ErrAgentState/unknown fails closed", Request{Agent: reportBot, Task: "nightly-report", Params: map[string]string{"region": "eu"}, Now: ts(t, openTime), AgentState: "sleepy"},
			want{outcome: Deny, codes: []ReasonCode{ReasonAgentPaused}, tier: TierLow, ttl: 10 * time.Minute}},
		{"ErrGlobalFreeze", Request{Agent: reportBot, Task: "nightly-report", Params: map[string]string{"region": "eu"}, Now: ts(t, openTime), GlobalFreeze: true},
			want{outcome: Deny, codes: []ReasonCode{ReasonGlobalFreeze}, tier: TierLow, ttl: 10 * time.Minute, rule: "global_freeze", result: ResultDeny}},
		{"ErrUnknownTask", Request{Agent: reportBot, Task: "drop-tables", Now: ts(t, openTime)},
			want{outcome: Deny, codes: []ReasonCode{ReasonUnknownTask}, rule: "task", result: ResultDeny}},
		{"ErrTaskNotGranted", Request{Agent: special, Task: "nightly-report", Params: map[string]string{"region": "eu"}, Now: ts(t, openTime)},
			want{outcome: Deny, codes: []ReasonCode{ReasonTaskNotGranted}, tier: TierLow, ttl: 10 * time.Minute, rule: "grant", result: ResultDeny}},
		{"ErrUnknownParam", Request{Agent: reportBot, Task: "nightly-report", Params: map[string]string{"region": "eu", "table": "users"}, Now: ts(t, openTime)},
			want{outcome: Deny, codes: []ReasonCode{ReasonUnknownParam}, tier: TierLow, ttl: 10 * time.Minute, rule: "render", result: ResultSkip}},
		{"ErrParamConstraint/enum", Request{Agent: reportBot, Task: "nightly-report", Params: map[string]string{"region": "apac"}, Now: ts(t, openTime)},
			want{outcome: Deny, codes: []ReasonCode{ReasonParamConstraint}, tier: TierLow, ttl: 10 * time.Minute, rule: "param.region", result: ResultDeny}},
		{"ErrParamConstraint/pattern", Request{Agent: reportBot, Task: "close-ticket", Params: map[string]string{"ticket": "12a"}, Now: ts(t, openTime)},
			want{outcome: Deny, codes: []ReasonCode{ReasonParamConstraint}, tier: TierHigh, approvals: 1, ttl: 5 * time.Minute, rule: "param.ticket", result: ResultDeny}},
		{"ErrParamConstraint/pattern is anchored", Request{Agent: reportBot, Task: "close-ticket", Params: map[string]string{"ticket": "12\n"}, Now: ts(t, openTime)},
			want{outcome: Deny, codes: []ReasonCode{ReasonParamConstraint}, tier: TierHigh, approvals: 1, ttl: 5 * time.Minute}},
		{"ErrParamConstraint/traversal", Request{Agent: reportBot, Task: "close-ticket", Params: map[string]string{"ticket": "../../sys/policy/x"}, Now: ts(t, openTime)},
			want{outcome: Deny, codes: []ReasonCode{ReasonParamConstraint}, tier: TierHigh, approvals: 1, ttl: 5 * time.Minute, rule: "render", result: ResultSkip}},
		{"ErrParamConstraint/right-to-left override", Request{Agent: reportBot, Task: "close-ticket", Params: map[string]string{"ticket": "1\u202E2"}, Now: ts(t, openTime)},
			want{outcome: Deny, codes: []ReasonCode{ReasonParamConstraint}, tier: TierHigh, approvals: 1, ttl: 5 * time.Minute, rule: "param.ticket", result: ResultDeny}},
		{"ErrParamConstraint/percent-encoded", Request{Agent: reportBot, Task: "close-ticket", Params: map[string]string{"ticket": "%2e%2e"}, Now: ts(t, openTime)},
			want{outcome: Deny, codes: []ReasonCode{ReasonParamConstraint}, tier: TierHigh, approvals: 1, ttl: 5 * time.Minute, rule: "param.ticket", result: ResultDeny}},
		{"ErrMissingParam", Request{Agent: reportBot, Task: "nightly-report", Now: ts(t, openTime)},
			want{outcome: Deny, codes: []ReasonCode{ReasonMissingParam}, tier: TierLow, ttl: 10 * time.Minute, rule: "param.region", result: ResultDeny}},
		{"ErrFrozen", Request{Agent: reportBot, Task: "nightly-report", Params: map[string]string{"region": "eu"}, Now: ts(t, billingT)},
			want{outcome: Deny, codes: []ReasonCode{ReasonFrozen}, tier: TierLow, ttl: 10 * time.Minute, next: "2027-01-02T00:00:00+01:00",
				path: "database/creds/report-eu", rule: "window.billing-close", result: ResultDeny}},
		{"ErrFrozen/absolute window", Request{Agent: opsBot, Task: "payment", Params: map[string]string{"order": "ord_abcd", "amount": "10"}, Now: ts(t, maintenceT)},
			want{outcome: Deny, codes: []ReasonCode{ReasonFrozen}, tier: TierCritical, approvals: 2, ttl: 15 * time.Minute, next: "2026-06-11T00:00:00Z",
				policy: `path "payments/refunds/ord_abcd"`, rule: "window.maintenance", result: ResultDeny}},
		{"ApprovalOutsideBusinessHours", Request{Agent: reportBot, Task: "nightly-report", Params: map[string]string{"region": "eu"}, Now: ts(t, eveningT)},
			want{outcome: ApprovalRequired, codes: []ReasonCode{ReasonWindowApproval}, tier: TierLow, approvals: 1, ttl: 10 * time.Minute,
				path: "database/creds/report-eu", rule: "outside.business-hours", result: ResultApproval}},
		{"ApprovalHighTier", Request{Agent: reportBot, Task: "close-ticket", Params: map[string]string{"ticket": "4711"}, Now: ts(t, openTime)},
			want{outcome: ApprovalRequired, codes: []ReasonCode{ReasonTierApproval}, tier: TierHigh, approvals: 1, ttl: 5 * time.Minute,
				policy: `path "secret/data/tickets/4711" { capabilities = ["read", "update"] }`, rule: "approval", result: ResultApproval}},
		{"TTLClampedToTemplateMax", Request{Agent: reportBot, Task: "close-ticket", Params: map[string]string{"ticket": "4711"}, Now: ts(t, openTime), TTL: time.Hour},
			want{outcome: ApprovalRequired, codes: []ReasonCode{ReasonTierApproval}, tier: TierHigh, approvals: 1, ttl: 15 * time.Minute}},
		{"TTLRequestedBelowMax", Request{Agent: reportBot, Task: "nightly-report", Params: map[string]string{"region": "eu"}, Now: ts(t, openTime), TTL: 20 * time.Minute},
			want{outcome: Allow, tier: TierLow, ttl: 20 * time.Minute}},
		{"ApprovalCriticalTwoApprovers/TTL clamped to tier", Request{Agent: opsBot, Task: "payment", Params: map[string]string{"order": "ord_abcd", "amount": "10"}, Now: ts(t, openTime), TTL: time.Hour},
			want{outcome: ApprovalRequired, codes: []ReasonCode{ReasonTierApproval}, tier: TierCritical, approvals: 2, ttl: 15 * time.Minute}},
		{"EscalateWithInWindow", Request{Agent: opsBot, Task: "deploy", Params: map[string]string{"env": "production"}, Now: ts(t, "2026-12-15T23:00:00-05:00")},
			want{outcome: ApprovalRequired, codes: []ReasonCode{ReasonTierApproval}, tier: TierCritical, approvals: 2, ttl: 15 * time.Minute, path: "database/creds/deploy-production", rule: "escalate[1]", result: ResultRaise}},
		{"EscalateWithoutInWindow", Request{Agent: opsBot, Task: "deploy", Params: map[string]string{"env": "production"}, Now: ts(t, "2026-12-15T12:00:00-05:00")},
			want{outcome: ApprovalRequired, codes: []ReasonCode{ReasonTierApproval}, tier: TierHigh, approvals: 1, ttl: 15 * time.Minute, rule: "escalate[1]", result: ResultPass}},
		{"DefaultParam", Request{Agent: opsBot, Task: "deploy", Now: ts(t, openTime)},
			want{outcome: Allow, tier: TierLow, ttl: 15 * time.Minute, path: "database/creds/deploy-staging", rule: "param.env", result: ResultPass}},
		{"SeveralDenyReasons", Request{Agent: reportBot, Task: "nightly-report", Params: map[string]string{"region": "apac", "x": "1"}, Now: ts(t, billingT), AgentState: AgentPaused},
			want{outcome: Deny, codes: []ReasonCode{ReasonAgentPaused, ReasonUnknownParam, ReasonParamConstraint, ReasonFrozen}, tier: TierLow, ttl: 10 * time.Minute, next: "2027-01-02T00:00:00+01:00"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := p.Evaluate(tt.req)
			checkDecision(t, d, tt.want)
			// Pure: the same request decides the same way.
			if again := p.Evaluate(tt.req); !reflect.DeepEqual(d, again) {
				t.Fatalf("second evaluation differs:\n%+v\n%+v", d, again)
			}
		})
	}
}

func checkDecision(t *testing.T, d Decision, w want) {
	t.Helper()
	dump := func() string {
		var b strings.Builder
		for _, s := range d.Trace {
			fmt.Fprintf(&b, "\n  %-24s %-8s %s", s.Rule, s.Result, s.Detail)
		}
		return fmt.Sprintf("%+v%s", d.Reasons, b.String())
	}
	if d.Outcome != w.outcome {
		t.Fatalf("outcome = %s, want %s; %s", d.Outcome, w.outcome, dump())
	}
	var codes []ReasonCode
	for _, r := range d.Reasons {
		codes = append(codes, r.Code)
	}
	if fmt.Sprint(codes) != fmt.Sprint(w.codes) {
		t.Fatalf("reasons = %v, want %v; %s", codes, w.codes, dump())
	}
	if d.Tier != w.tier || d.Approvals != w.approvals || d.TTL != w.ttl {
		t.Fatalf("tier/approvals/ttl = %s/%d/%s, want %s/%d/%s; %s", d.Tier, d.Approvals, d.TTL, w.tier, w.approvals, w.ttl, dump())
	}
	gotNext := ""
	if !d.NextAllowedAt.IsZero() {
		gotNext = d.NextAllowedAt.Format(time.RFC3339)
	}
	if gotNext != w.next {
		t.Fatalf("next_allowed_at = %q, want %q", gotNext, w.next)
	}
	if w.path != "" && d.Rendered.Path != w.path {
		t.Fatalf("path = %q, want %q", d.Rendered.Path, w.path)
	}
	if w.policy != "" && !strings.Contains(d.Rendered.Policy, w.policy) {
		t.Fatalf("policy = %q, want it to contain %q", d.Rendered.Policy, w.policy)
	}
	if w.rule != "" {
		found := false
		for _, s := range d.Trace {
			if s.Rule == w.rule {
				found = true
				if s.Result != w.result {
					t.Fatalf("rule %s = %s, want %s; %s", w.rule, s.Result, w.result, dump())
				}
			}
		}
		if !found {
			t.Fatalf("rule %s not in trace; %s", w.rule, dump())
		}
	}
}

func TestEvaluate_FrozenNamesWindowAndNextTime(t *testing.T) {
	p := loadTestPolicy(t)
	d := p.Evaluate(Request{Agent: reportBot, Task: "nightly-report", Params: map[string]string{"region": "eu"}, Now: ts(t, billingT)})
	if d.Outcome != Deny || len(d.Reasons) == 0 {
		t.Fatalf("decision = %+v", d)
	}
	r := d.Reasons[0]
	if r.Code != ReasonFrozen || r.Window != "billing-close" || r.NextAllowedAt.Format(time.RFC3339) != "2027-01-02T00:00:00+01:00" {
		t.Fatalf("reason = %+v", r)
	}
	want := `nightly-report is frozen during window billing-close (cron "0 0 28 * *" for 120h in Europe/Berlin); next allowed at 2027-01-02T00:00:00+01:00`
	if r.Message != want {
		t.Fatalf("message =\n%s\nwant\n%s", r.Message, want)
	}
}

func TestEvaluate_RenderedOutputs(t *testing.T) {
	p := loadTestPolicy(t)
	d := p.Evaluate(Request{Agent: opsBot, Task: "service-cert", Params: map[string]string{"service": "search"}, Now: ts(t, openTime)})
	if d.Outcome != Allow {
		t.Fatalf("outcome %s: %+v", d.Outcome, d.Reasons)
	}
	want := &Names{
		CommonName: "search.eu.svc.example.org",
		AltNames:   []string{"search.svc.example.org"},
		URISANs:    []string{"spiffe://example.org/service/search"},
	}
	if !reflect.DeepEqual(d.Rendered.Names, want) {
		t.Fatalf("names = %+v", d.Rendered.Names)
	}
	if d.Params["region"] != "eu" || d.BackendType != BackendVaultPKI || d.TTL != 24*time.Hour || d.MaxTTL != 72*time.Hour {
		t.Fatalf("decision = %+v", d)
	}
	d = p.Evaluate(Request{Agent: reportBot, Task: "nightly-report", Params: map[string]string{"region": "eu"}, Now: ts(t, openTime)})
	if d.Rendered.Vars["role"] != "report-eu" || d.Rendered.Path != "database/creds/report-eu" || d.Rendered.Policy != "" {
		t.Fatalf("rendered = %+v", d.Rendered)
	}
	tm, _ := p.Template("nightly-report")
	if d.TemplateVersion != tm.Version || d.Owner != "spiffe://example.org/ops/bob" || d.AgentPattern != "spiffe://example.org/agent/report-*" {
		t.Fatalf("decision = %+v", d)
	}
}

func loadPolicyYAML(t *testing.T, policy string, tmpls ...string) *Policy {
	t.Helper()
	pc, err := ParsePolicy("p.yaml", []byte(policy))
	if err != nil {
		t.Fatal(err)
	}
	var files []File
	for i, s := range tmpls {
		files = append(files, File{Name: fmt.Sprintf("t%d.yaml", i), Data: []byte(s)})
	}
	p, err := Load(Source{Policy: pc, Templates: files, Backends: testBackends})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestEvaluate_NextAllowedAcrossChainedWindows(t *testing.T) {
	p := loadPolicyYAML(t, `
agents: [{ id: spiffe://example.org/a, owner: spiffe://example.org/o, templates: [t] }]
freeze_windows:
  first:  { from: "2026-01-01T00:00:00Z", until: "2026-01-10T00:00:00Z" }
  second: { from: "2026-01-09T00:00:00Z", until: "2026-01-15T00:00:00Z" }
  office: { cron: "0 9 * * 1-5", duration: 9h, timezone: UTC }
`, `name: t
backend: tokens
policy: 'path "x" { capabilities = ["read"] }'
ttl: 5m
risk: low
windows:
  - { window: first, effect: deny }
  - { window: second, effect: deny }
  - { outside: office, effect: deny }
`)
	// Jan 5 2026 is a Monday. first ends Jan 10, but second runs to the 15th
	// (a Thursday, 00:00, outside office hours), so the next allowed time is
	// Thursday 09:00.
	d := p.Evaluate(Request{Agent: "spiffe://example.org/a", Task: "t", Now: ts(t, "2026-01-05T10:00:00Z")})
	if d.Outcome != Deny || d.NextAllowedAt.Format(time.RFC3339) != "2026-01-15T09:00:00Z" {
		t.Fatalf("outcome %s next %s; %+v", d.Outcome, d.NextAllowedAt, d.Reasons)
	}
}

func TestEvaluate_ConditionErrorFailsClosed(t *testing.T) {
	p := loadPolicyYAML(t, `
agents: [{ id: spiffe://example.org/a, owner: spiffe://example.org/o, templates: [t] }]
`, `name: t
backend: tokens
params: { n: { pattern: "^[a-z0-9]{1,3}$" } }
policy: 'path "x/{{ .params.n }}" { capabilities = ["read"] }'
ttl: 5m
risk: low
escalate:
  - { when: 'int(params.n) > 5', to: critical }
`)
	d := p.Evaluate(Request{Agent: "spiffe://example.org/a", Task: "t", Params: map[string]string{"n": "abc"}, Now: ts(t, openTime)})
	if d.Tier != TierCritical || d.Outcome != ApprovalRequired || d.Trace[6].Rule != "escalate[0]" || d.Trace[6].Result != ResultRaise {
		t.Fatalf("tier %s outcome %s trace %+v", d.Tier, d.Outcome, d.Trace)
	}
	d = p.Evaluate(Request{Agent: "spiffe://example.org/a", Task: "t", Params: map[string]string{"n": "3"}, Now: ts(t, openTime)})
	if d.Tier != TierLow || d.Outcome != Allow {
		t.Fatalf("tier %s outcome %s", d.Tier, d.Outcome)
	}
}

// TestEvaluate_EscalationNeverLowers: with several rules true, the highest
// target wins whatever their order.
func TestEvaluate_EscalationNeverLowers(t *testing.T) {
	p := loadPolicyYAML(t, `
agents: [{ id: spiffe://example.org/a, owner: spiffe://example.org/o, templates: [t] }]
`, `name: t
backend: tokens
policy: 'path "x" { capabilities = ["read"] }'
ttl: 5m
risk: low
escalate:
  - { when: 'true', to: critical }
  - { when: 'true', to: medium }
`)
	d := p.Evaluate(Request{Agent: "spiffe://example.org/a", Task: "t", Now: ts(t, openTime)})
	if d.Tier != TierCritical {
		t.Fatalf("tier = %s", d.Tier)
	}
}

func TestRenderer_FastPathMatchesTextTemplate(t *testing.T) {
	d := &renderData{
		params: map[string]string{"region": "eu", "n": "7"},
		vars:   map[string]string{"role": "report-eu"},
		agent:  map[string]string{"id": "spiffe://example.org/a", "owner": "spiffe://example.org/o"},
		task:   "t", hasVars: true,
	}
	for _, src := range []string{
		"plain",
		"database/creds/{{ .vars.role }}",
		"{{.params.region}}-{{ .params.n }}/{{ .task }}/{{ .agent.id }}",
		"{{ .params.missing }}",
		"{{ .vars.missing }}",
		"{{ if eq .params.region \"eu\" }}e{{ end }}",
	} {
		r, err := compileText("x", src)
		if err != nil {
			t.Fatal(err)
		}
		fast, fastErr := r.render(d)
		r.parts = nil
		slow, slowErr := r.render(d)
		if fast != slow || (fastErr == nil) != (slowErr == nil) {
			t.Errorf("%q: fast %q %v, slow %q %v", src, fast, fastErr, slow, slowErr)
		}
	}
}

// TestEvaluate_Concurrent: a Policy is shared by every request goroutine of
// the broker; run with -race.
func TestEvaluate_Concurrent(t *testing.T) {
	p := loadTestPolicy(t)
	reqs := []Request{
		{Agent: reportBot, Task: "nightly-report", Params: map[string]string{"region": "us"}, Now: ts(t, openTime)},
		{Agent: reportBot, Task: "nightly-report", Params: map[string]string{"region": "eu"}, Now: ts(t, billingT)},
		{Agent: opsBot, Task: "payment", Params: map[string]string{"order": "ord_abcd", "amount": "1"}, Now: ts(t, openTime)},
		{Agent: opsBot, Task: "deploy", Params: map[string]string{"env": "production"}, Now: ts(t, eveningT)},
	}
	want := make([]Decision, len(reqs))
	for i, r := range reqs {
		want[i] = p.Evaluate(r)
	}
	done := make(chan error)
	for g := range 8 {
		go func() {
			for i := range 50 {
				k := (g + i) % len(reqs)
				if d := p.Evaluate(reqs[k]); !reflect.DeepEqual(d, want[k]) {
					done <- fmt.Errorf("request %d decided differently under concurrency", k)
					return
				}
			}
			done <- nil
		}()
	}
	for range 8 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

// segmentCheck stands in for a backend's RenderCheck: it refuses a path
// with more than three segments, and counts its calls.
type segmentCheck struct{ calls *int }

func (c segmentCheck) CheckRendered(r Rendered) error {
	*c.calls++
	if strings.Count(r.Path, "/") > 2 {
		return fmt.Errorf("path %q has too many segments", r.Path)
	}
	return nil
}

// TestEvaluate_BackendCheck: the backend's check runs on what was
// rendered, after every other rule; its refusal denies the request (never
// an approval), names the backend, and keeps the rendered outputs for
// explain. It never runs on invalid parameters.
func TestEvaluate_BackendCheck(t *testing.T) {
	calls := 0
	pc, err := ParsePolicy("p.yaml", []byte("agents: [{ id: spiffe://example.org/a, owner: spiffe://example.org/o, templates: [t] }]\n"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := Load(Source{Policy: pc, Templates: []File{{Name: "t.yaml", Data: []byte(`name: t
backend: db
params: { role: { pattern: "^[a-z]+(/[a-z]+)*$", allow: [slash] } }
vars: { role: "{{ .params.role }}" }
ttl: 5m
risk: high
`)}}, Backends: map[string]Backend{"db": {Type: BackendVaultLease, Path: "database/creds/{{ .vars.role }}", Check: segmentCheck{&calls}}}})
	if err != nil {
		t.Fatal(err)
	}
	eval := func(role string) Decision {
		return p.Evaluate(Request{Agent: "spiffe://example.org/a", Task: "t", Params: map[string]string{"role": role}, Now: ts(t, openTime)})
	}
	d := eval("eu")
	checkDecision(t, d, want{outcome: ApprovalRequired, codes: []ReasonCode{ReasonTierApproval}, tier: TierHigh, approvals: 1, ttl: 5 * time.Minute,
		path: "database/creds/eu", rule: "backend", result: ResultPass})
	d = eval("eu/extra")
	checkDecision(t, d, want{outcome: Deny, codes: []ReasonCode{ReasonBackendRefused}, tier: TierHigh, approvals: 1, ttl: 5 * time.Minute,
		path: "database/creds/eu/extra", rule: "backend", result: ResultDeny})
	if want := `backend db (vault-lease) would refuse this request: path "database/creds/eu/extra" has too many segments`; d.Reasons[0].Message != want {
		t.Fatalf("message %q, want %q", d.Reasons[0].Message, want)
	}
	if last := d.Trace[len(d.Trace)-1]; last.Rule != "backend" {
		t.Fatalf("the backend check is not the last rule: %+v", d.Trace)
	}
	n := calls
	d = eval("../x")
	checkDecision(t, d, want{outcome: Deny, codes: []ReasonCode{ReasonParamConstraint}, tier: TierHigh, approvals: 1, ttl: 5 * time.Minute, rule: "render", result: ResultSkip})
	if calls != n {
		t.Fatal("the backend check ran on invalid parameters")
	}
}
