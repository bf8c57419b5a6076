package templates

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/cel-go/common/types"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// AgentState is the operator-controlled state of an agent, kept by the
// broker and passed in.
type AgentState string

// Agent states. The zero value is treated as active.
const (
	AgentActive      AgentState = "active"
	AgentPaused      AgentState = "paused"
	AgentQuarantined AgentState = "quarantined"
)

// Request is everything a decision depends on. Evaluate reads nothing else:
// no clock, no store, no network.
type Request struct {
	// Agent is the verified SPIFFE ID of the requester.
	Agent string
	// Task is the template name.
	Task string
	// Params are the request's parameters.
	Params map[string]string
	// TTL is the requested lease TTL; zero or negative asks for the
	// template's default.
	TTL time.Duration
	// Now is the evaluation time (the broker's clock, or explain's --at).
	Now time.Time
	// AgentState is the agent's current state; "" means active.
	AgentState AgentState
	// GlobalFreeze is true while an operator's emergency freeze is on.
	GlobalFreeze bool
}

// Outcome is what a decision says to do.
type Outcome string

// Outcomes.
const (
	Allow            Outcome = "allow"
	Deny             Outcome = "deny"
	ApprovalRequired Outcome = "approval_required"
)

// Decision is the result of Evaluate: what to do, why, and exactly what
// would be minted, so approvers and `latch explain` see the real thing.
type Decision struct {
	Outcome Outcome `json:"outcome"`

	Agent string `json:"agent"`
	// AgentPattern is the agents: entry that matched; Owner is its owner.
	AgentPattern string `json:"agent_pattern,omitempty"`
	Owner        string `json:"owner,omitempty"`

	Task            string `json:"task"`
	TemplateVersion string `json:"template_version,omitempty"`
	Backend         string `json:"backend,omitempty"`
	BackendType     string `json:"backend_type,omitempty"`
	// Params are the effective parameters (defaults applied), set only when
	// every parameter is valid.
	Params map[string]string `json:"params,omitempty"`

	// Tier is the risk tier after escalation; TierWhy says how it was
	// reached, base risk first.
	Tier    string   `json:"tier,omitempty"`
	TierWhy []string `json:"tier_why,omitempty"`
	// Approvals is how many distinct approvals an approval_required
	// decision needs. Alert asks the broker to raise an alert on issue.
	Approvals int  `json:"approvals"`
	Alert     bool `json:"alert,omitempty"`

	// TTL is the lease TTL: requested (or the template default), clamped
	// to the template's max_ttl and the tier's max_ttl. MaxTTL is the
	// limit renewals may reach.
	TTL    time.Duration `json:"ttl"`
	MaxTTL time.Duration `json:"max_ttl"`

	Rendered Rendered `json:"rendered"`

	// Reasons explain the outcome: deny reasons for Deny, approval reasons
	// for ApprovalRequired, none for Allow.
	Reasons []Reason `json:"reasons,omitempty"`
	// Trace lists every rule checked, in order.
	Trace []Step `json:"trace"`
	// NextAllowedAt is, when deny windows block, the first time none does.
	NextAllowedAt time.Time `json:"next_allowed_at,omitzero"`
	EvaluatedAt   time.Time `json:"evaluated_at"`
}

// Rendered holds the template outputs for this request. Only the fields the
// backend uses are set.
type Rendered struct {
	// Policy is the Vault ACL policy (vault-token).
	Policy string `json:"policy,omitempty"`
	// Path is the engine path (vault-lease), rendered from the backend's
	// path template.
	Path string `json:"path,omitempty"`
	// Vars are the template's vars.
	Vars map[string]string `json:"vars,omitempty"`
	// Names are the certificate names (vault-pki).
	Names *Names `json:"names,omitempty"`
}

// Names are rendered certificate names.
type Names struct {
	CommonName string   `json:"common_name"`
	AltNames   []string `json:"alt_names,omitempty"`
	URISANs    []string `json:"uri_sans,omitempty"`
	IPSANs     []string `json:"ip_sans,omitempty"`
}

// Step is one rule checked during evaluation.
type Step struct {
	Rule   string `json:"rule"`
	Result Result `json:"result"`
	Detail string `json:"detail"`
}

// Result is a rule's effect.
type Result string

// Rule results.
const (
	ResultPass     Result = "pass"     // the rule allows the request
	ResultDeny     Result = "deny"     // the rule denies it
	ResultApproval Result = "approval" // the rule requires approval
	ResultRaise    Result = "raise"    // an escalation raised the tier
	ResultSkip     Result = "skip"     // not checked: an earlier rule failed
)

// Err returns a *Denied for a Deny decision and nil otherwise.
func (d *Decision) Err() error {
	if d.Outcome != Deny {
		return nil
	}
	return &Denied{Agent: d.Agent, Task: d.Task, Reasons: d.Reasons, NextAllowedAt: d.NextAllowedAt}
}

// evaluation is the per-request scratch state.
type evaluation struct {
	p      *Policy
	now    time.Time
	active []int8 // per window index: 0 not computed, 1 inactive, 2 active
	buf    [8]int8
}

func (ev *evaluation) windowActive(i int) bool {
	if ev.active[i] == 0 {
		ev.active[i] = 1
		if ev.p.windowList[i].Active(ev.now) {
			ev.active[i] = 2
		}
	}
	return ev.active[i] == 2
}

// Evaluate decides a request. It is pure (the same Request always gives the
// same Decision), never panics on any input, and does no I/O; every
// template, condition and window was compiled by Load.
func (p *Policy) Evaluate(req Request) Decision {
	ev := &evaluation{p: p, now: req.Now}
	if n := len(p.windowList); n <= len(ev.buf) {
		ev.active = ev.buf[:n]
	} else {
		ev.active = make([]int8, n)
	}
	d := Decision{Agent: req.Agent, Task: req.Task, EvaluatedAt: req.Now}
	steps := 12 + len(req.Params)
	if t, ok := p.templates[req.Task]; ok {
		steps += len(t.Params) + len(t.Escalations) + len(t.Windows)
	}
	d.Trace = make([]Step, 0, steps)
	var denies, approvals []Reason
	deny := func(rule string, code ReasonCode, msg string) {
		d.Trace = append(d.Trace, Step{Rule: rule, Result: ResultDeny, Detail: msg})
		denies = append(denies, Reason{Code: code, Message: msg})
	}
	pass := func(rule, detail string) {
		d.Trace = append(d.Trace, Step{Rule: rule, Result: ResultPass, Detail: detail})
	}
	skip := func(rule, detail string) {
		d.Trace = append(d.Trace, Step{Rule: rule, Result: ResultSkip, Detail: detail})
	}

	// Who is asking.
	var agent *Agent
	if _, err := spiffeid.FromString(req.Agent); err != nil {
		deny("agent", ReasonUnknownAgent, fmt.Sprintf("%s is not a valid SPIFFE ID", quoteTrunc(req.Agent)))
	} else if a, ok := p.Agent(req.Agent); !ok {
		deny("agent", ReasonUnknownAgent, fmt.Sprintf("agent %s is not registered", req.Agent))
	} else {
		agent = a
		d.AgentPattern, d.Owner = a.Pattern, a.Owner
		pass("agent", a.detail)
	}
	switch req.AgentState {
	case "", AgentActive:
		pass("agent_state", "active")
	case AgentPaused:
		deny("agent_state", ReasonAgentPaused, "agent is paused by an operator")
	case AgentQuarantined:
		deny("agent_state", ReasonAgentQuarantined, "agent is quarantined by an operator")
	default:
		// An unknown state is a caller bug; fail closed.
		deny("agent_state", ReasonAgentPaused, fmt.Sprintf("unknown agent state %s", quoteTrunc(string(req.AgentState))))
	}
	if req.GlobalFreeze {
		deny("global_freeze", ReasonGlobalFreeze, "a global emergency freeze is in effect")
	} else {
		pass("global_freeze", "not in effect")
	}

	// Which task.
	t, ok := p.templates[req.Task]
	if !ok {
		deny("task", ReasonUnknownTask, fmt.Sprintf("no template named %s", quoteTrunc(req.Task)))
		return finish(d, denies, nil)
	}
	d.TemplateVersion, d.Backend, d.BackendType = t.Version, t.Backend, t.BackendType
	pass("task", t.taskDetail)
	switch {
	case agent == nil:
		skip("grant", "agent not registered")
	case agent.Granted(t.Name):
		pass("grant", t.Name+" is granted to "+agent.Pattern)
	default:
		deny("grant", ReasonTaskNotGranted, fmt.Sprintf("%s is not granted to %s", t.Name, agent.Pattern))
	}

	// Parameters: unknown ones first (sorted, for a stable trace), then
	// each declared one.
	paramsOK := true
	if len(req.Params) > 0 {
		var unknown []string
		for k := range req.Params {
			if t.params[k] == nil {
				unknown = append(unknown, k)
			}
		}
		sort.Strings(unknown)
		for _, k := range unknown {
			paramsOK = false
			deny("param", ReasonUnknownParam, fmt.Sprintf("unknown parameter %s; %s", quoteTrunc(k), allowedParams(t)))
		}
	}
	params := make(map[string]string, len(t.Params))
	for i := range t.Params {
		pd := &t.Params[i]
		rule := "param." + pd.Name
		v, given := req.Params[pd.Name]
		switch {
		case !given && pd.HasDefault:
			params[pd.Name] = pd.Default
			pass(rule, fmt.Sprintf("%q (default)", pd.Default))
		case !given:
			paramsOK = false
			deny(rule, ReasonMissingParam, fmt.Sprintf("parameter %s is required", pd.Name))
		default:
			if msg := t.params[pd.Name].check(v); msg != "" {
				paramsOK = false
				deny(rule, ReasonParamConstraint, fmt.Sprintf("parameter %s: %s", pd.Name, msg))
			} else {
				params[pd.Name] = v
				pass(rule, strconv.Quote(v)+pd.suffix)
			}
		}
	}
	if paramsOK {
		d.Params = params
	}

	// Risk tier.
	level := t.riskLevel
	d.TierWhy = []string{t.baseWhy}
	agentMap := map[string]string{"id": req.Agent, "owner": d.Owner}
	if len(t.Escalations) > 0 {
		if !paramsOK {
			skip("escalate", "parameters are invalid")
		} else {
			act := newActivation(ev, params, agentMap, t.Name, req.Now)
			for _, e := range t.Escalations {
				rule := e.rule
				out, _, err := e.cond.prog.Eval(act)
				switch {
				case err != nil:
					// A condition that cannot be evaluated raises the
					// tier: failing closed costs an approval, failing
					// open could skip one.
					d.Trace = append(d.Trace, Step{Rule: rule, Result: ResultRaise,
						Detail: fmt.Sprintf("%s: error %v; raised to %s (fail closed)", e.When, err, e.To)})
					d.TierWhy = append(d.TierWhy, fmt.Sprintf("%s: %s failed to evaluate → %s", rule, e.When, e.To))
					level = max(level, e.toLevel)
				case out == types.True:
					d.Trace = append(d.Trace, Step{Rule: rule, Result: ResultRaise, Detail: e.trueDetail})
					d.TierWhy = append(d.TierWhy, e.why)
					level = max(level, e.toLevel)
				default:
					pass(rule, e.falseDetail)
				}
			}
		}
	}
	tier := p.tiers[level]
	d.Tier, d.Alert = tier.Name, tier.Alert
	if len(d.TierWhy) == 1 {
		pass("tier", t.baseWhy)
	} else {
		pass("tier", strings.Join(d.TierWhy, "; "))
	}

	// TTL.
	d.TTL, d.MaxTTL = t.TTL, t.MaxTTL
	ttlWhy := t.ttlDefault
	if req.TTL > 0 {
		d.TTL, ttlWhy = req.TTL, "requested "+fmtDuration(req.TTL)
	}
	if tier.MaxTTL > 0 && tier.MaxTTL < d.MaxTTL {
		d.MaxTTL = tier.MaxTTL
	}
	if d.TTL > d.MaxTTL {
		limit := "template max_ttl"
		if d.MaxTTL < t.MaxTTL {
			limit = "tier " + tier.Name + " max_ttl"
		}
		ttlWhy += fmt.Sprintf(", clamped to %s %s", limit, fmtDuration(d.MaxTTL))
		d.TTL = d.MaxTTL
	}
	pass("ttl", ttlWhy)

	// Freeze windows.
	var denyRules []WindowRule
	var blockedUntil time.Time
	blocked, neverEnds, windowApproval := false, false, false
	for _, r := range t.Windows {
		w := p.windowList[r.index]
		active := ev.windowActive(r.index)
		if r.Effect == EffectDeny {
			denyRules = append(denyRules, r)
		}
		rule := r.rule
		if active == r.Outside {
			if active {
				pass(rule, r.activeDetail)
			} else {
				pass(rule, r.inactiveDetail)
			}
			continue
		}
		state := "inactive"
		if active {
			state = "active"
		}
		next, hasNext := w.NextChange(req.Now)
		detail, nextText := r.Window+" is "+state, ""
		if hasNext {
			nextText = next.Format(time.RFC3339)
			detail += "; changes at " + nextText
		}
		reason := Reason{Message: r.blockMessage, Window: r.Window, NextAllowedAt: next}
		if r.Effect == EffectDeny {
			if hasNext {
				reason.Message += "; next allowed at " + nextText
				if !blocked || next.After(blockedUntil) {
					blockedUntil = next
				}
			} else {
				neverEnds = true
			}
			reason.Code = ReasonFrozen
			d.Trace = append(d.Trace, Step{Rule: rule, Result: ResultDeny, Detail: detail})
			denies = append(denies, reason)
			blocked = true
			continue
		}
		windowApproval = true
		reason.Code = ReasonWindowApproval
		d.Trace = append(d.Trace, Step{Rule: rule, Result: ResultApproval, Detail: detail})
		approvals = append(approvals, reason)
	}
	if blocked && !neverEnds {
		// Each blocking window blocks until its own change, so the latest
		// of those is a lower bound; from there, other windows may still
		// (or newly) block.
		d.NextAllowedAt = p.nextAllowed(denyRules, blockedUntil)
	}

	// Approvals.
	d.Approvals = tier.Approvals
	if tier.Approvals > 0 {
		approvals = append([]Reason{{Code: ReasonTierApproval,
			Message: fmt.Sprintf("risk tier %s needs %d approval%s", tier.Name, tier.Approvals, plural(tier.Approvals))}}, approvals...)
	}
	if windowApproval && d.Approvals < 1 {
		d.Approvals = 1
	}
	if d.Approvals > 0 {
		d.Trace = append(d.Trace, Step{Rule: "approval", Result: ResultApproval, Detail: fmt.Sprintf("%d approval%s needed", d.Approvals, plural(d.Approvals))})
	} else {
		pass("approval", "none needed")
	}

	// What would be minted.
	if !paramsOK {
		skip("render", "parameters are invalid")
	} else if err := t.render(&d, params, agentMap); err != nil {
		deny("render", ReasonRenderFailed, err.Error())
	} else {
		pass("render", renderDetail(&d.Rendered))
	}
	return finish(d, denies, approvals)
}

func finish(d Decision, denies, approvals []Reason) Decision {
	switch {
	case len(denies) > 0:
		d.Outcome, d.Reasons = Deny, denies
	case d.Approvals > 0:
		d.Outcome, d.Reasons = ApprovalRequired, approvals
	default:
		d.Outcome = Allow
	}
	if d.Outcome != Deny {
		d.NextAllowedAt = time.Time{}
	}
	return d
}

// nextAllowed is the first instant at or after from at which none of the
// deny rules blocks: the end of one window may fall inside another.
func (p *Policy) nextAllowed(rules []WindowRule, from time.Time) time.Time {
	c := from
	for range 64 {
		moved := false
		for _, r := range rules {
			w := p.windowList[r.index]
			if w.Active(c) == r.Outside {
				continue
			}
			n, ok := w.NextChange(c)
			if !ok {
				return time.Time{}
			}
			c, moved = n, true
		}
		if !moved {
			return c
		}
	}
	return time.Time{}
}

// render fills d.Rendered.
func (t *Template) render(d *Decision, params, agent map[string]string) error {
	rd := &renderData{params: params, agent: agent, task: t.Name}
	if len(t.vars) > 0 {
		rd.vars = make(map[string]string, len(t.vars))
		for _, v := range t.vars {
			s, err := v.r.render(rd)
			if err != nil {
				return err
			}
			rd.vars[v.name] = s
		}
		d.Rendered.Vars = rd.vars
	}
	rd.hasVars = true
	var err error
	if t.policy != nil {
		if d.Rendered.Policy, err = t.policy.render(rd); err != nil {
			return err
		}
	}
	if t.path != nil {
		if d.Rendered.Path, err = t.path.render(rd); err != nil {
			return err
		}
	}
	if nr := t.names; nr != nil {
		n := &Names{}
		if n.CommonName, err = nr.commonName.render(rd); err != nil {
			return err
		}
		for _, list := range []struct {
			rs  []*renderer
			out *[]string
		}{{nr.altNames, &n.AltNames}, {nr.uriSANs, &n.URISANs}, {nr.ipSANs, &n.IPSANs}} {
			for _, r := range list.rs {
				s, err := r.render(rd)
				if err != nil {
					return err
				}
				*list.out = append(*list.out, s)
			}
		}
		d.Rendered.Names = n
	}
	return nil
}

func renderDetail(r *Rendered) string {
	var parts []string
	if r.Path != "" {
		parts = append(parts, "path "+r.Path)
	}
	if r.Policy != "" {
		n := strings.Count(strings.TrimRight(r.Policy, "\n"), "\n") + 1
		parts = append(parts, fmt.Sprintf("policy (%d line%s)", n, plural(n)))
	}
	if r.Names != nil {
		parts = append(parts, "common_name "+r.Names.CommonName)
	}
	if len(parts) == 0 && len(r.Vars) > 0 {
		parts = append(parts, fmt.Sprintf("%d vars", len(r.Vars)))
	}
	if len(parts) == 0 {
		return "nothing to render"
	}
	return strings.Join(parts, ", ")
}

func allowedParams(t *Template) string {
	if len(t.Params) == 0 {
		return t.Name + " takes no parameters"
	}
	names := make([]string, len(t.Params))
	for i, p := range t.Params {
		names[i] = p.Name
	}
	return "allowed: " + strings.Join(names, ", ")
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
