package templates

import (
	"fmt"
	"slices"
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

// strangerVisible are the reasons a stranger may see: who it is not, and
// the stops that apply to everyone alike.
var strangerVisible = []ReasonCode{
	ReasonUnknownAgent, ReasonTaskNotGranted, ReasonUnknownTask,
	ReasonAgentPaused, ReasonAgentQuarantined, ReasonGlobalFreeze,
}

// ForCaller is what the caller of d may learn of it. A stranger — a
// caller that is not a registered agent, or asks for a template not
// granted to it — learns why it is denied and nothing of the template:
// not its parameters, windows, tier or when it would be allowed, so that
// probing tells it nothing. Anyone else gets d. Operators see all of d
// in the audit and through explain.
func (d Decision) ForCaller() Decision {
	stranger := slices.ContainsFunc(d.Reasons, func(r Reason) bool {
		return r.Code == ReasonUnknownAgent || r.Code == ReasonTaskNotGranted
	})
	if !stranger {
		return d
	}
	out := Decision{Outcome: d.Outcome, Agent: d.Agent, Task: d.Task, EvaluatedAt: d.EvaluatedAt}
	for _, r := range d.Reasons {
		if slices.Contains(strangerVisible, r.Code) {
			out.Reasons = append(out.Reasons, Reason{Code: r.Code, Message: r.Message})
		}
	}
	return out
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

// Evaluate decides a request. It is pure (the same Request always gives the
// same Decision), never panics on any input, and does no I/O; every
// template, condition and window was compiled by Load.
//
// Each stage below checks one rule (or one family of rules) and writes its
// own steps of the trace, so the trace lists the rules in this order.
func (p *Policy) Evaluate(req Request) Decision {
	ev := p.newEvaluation(req)
	ev.identifyAgent()
	ev.checkAgentState()
	ev.checkGlobalFreeze()
	if !ev.findTemplate() {
		return ev.finish()
	}
	ev.checkGrant()
	ev.checkParams()
	ev.escalate()
	ev.settleTier()
	ev.settleTTL()
	ev.checkWindows()
	ev.countApprovals()
	ev.renderOutputs()
	return ev.finish()
}

// evaluation is the per-request scratch state: the decision being built,
// and what each stage of Evaluate leaves for the later ones.
type evaluation struct {
	p      *Policy
	req    Request
	active []int8 // per window index: 0 not computed, 1 inactive, 2 active
	buf    [8]int8

	d         Decision
	denies    []Reason
	approvals []Reason

	agent          *Agent            // the matching agents: entry; nil if none
	t              *Template         // the task's template, once found
	params         map[string]string // effective parameters (defaults applied)
	paramsOK       bool              // every parameter is valid
	agentMap       map[string]string // see agentVars
	level          int               // risk level, raised by escalation
	tier           Tier              // the tier level settles on
	windowApproval bool              // a require_approval window applies
}

func (p *Policy) newEvaluation(req Request) *evaluation {
	ev := &evaluation{p: p, req: req}
	if n := len(p.windowList); n <= len(ev.buf) {
		ev.active = ev.buf[:n]
	} else {
		ev.active = make([]int8, n)
	}
	ev.d = Decision{Agent: req.Agent, Task: req.Task, EvaluatedAt: req.Now}
	steps := 12 + len(req.Params)
	if t, ok := p.templates[req.Task]; ok {
		steps += len(t.Params) + len(t.Escalations) + len(t.Windows)
	}
	ev.d.Trace = make([]Step, 0, steps)
	return ev
}

// prepareTrace precomputes, at Load, the trace text that does not depend
// on the request, so Evaluate formats nothing on its common path. Each
// stage's part is beside the stage.
func (t *Template) prepareTrace(windows []*Window) {
	t.taskDetail = "template " + t.Name + " " + t.Version   // findTemplate
	t.baseWhy = "base risk " + t.Risk                       // escalate, settleTier
	t.ttlDefault = "template default " + fmtDuration(t.TTL) // settleTTL
	for i := range t.Escalations {
		t.Escalations[i].prepareTrace(i)
	}
	for i := range t.Windows {
		r := &t.Windows[i]
		r.prepareTrace(t.Name, windows[r.index])
	}
}

func (ev *evaluation) windowActive(i int) bool {
	if ev.active[i] == 0 {
		ev.active[i] = 1
		if ev.p.windowList[i].Active(ev.req.Now) {
			ev.active[i] = 2
		}
	}
	return ev.active[i] == 2
}

// agentVars is the agent as CEL conditions and renderers see it.
func (ev *evaluation) agentVars() map[string]string {
	if ev.agentMap == nil {
		ev.agentMap = map[string]string{"id": ev.req.Agent, "owner": ev.d.Owner}
	}
	return ev.agentMap
}

// Trace steps, each with the reason it adds to the decision, if any.

func (ev *evaluation) step(rule string, result Result, detail string) {
	ev.d.Trace = append(ev.d.Trace, Step{Rule: rule, Result: result, Detail: detail})
}

func (ev *evaluation) pass(rule, detail string) { ev.step(rule, ResultPass, detail) }

func (ev *evaluation) skip(rule, detail string) { ev.step(rule, ResultSkip, detail) }

func (ev *evaluation) deny(rule string, code ReasonCode, msg string) {
	ev.step(rule, ResultDeny, msg)
	ev.denies = append(ev.denies, Reason{Code: code, Message: msg})
}

// identifyAgent checks that the requester is a valid SPIFFE ID matching an
// agents: entry.
func (ev *evaluation) identifyAgent() {
	id := ev.req.Agent
	if _, err := spiffeid.FromString(id); err != nil {
		ev.deny("agent", ReasonUnknownAgent, fmt.Sprintf("%s is not a valid SPIFFE ID", quoteTrunc(id)))
	} else if a, ok := ev.p.Agent(id); !ok {
		ev.deny("agent", ReasonUnknownAgent, fmt.Sprintf("agent %s is not registered", id))
	} else {
		ev.agent = a
		ev.d.AgentPattern, ev.d.Owner = a.Pattern, a.Owner
		ev.pass("agent", a.detail)
	}
}

// checkAgentState denies an agent an operator paused or quarantined.
func (ev *evaluation) checkAgentState() {
	switch s := ev.req.AgentState; s {
	case "", AgentActive:
		ev.pass("agent_state", "active")
	case AgentPaused:
		ev.deny("agent_state", ReasonAgentPaused, "agent is paused by an operator")
	case AgentQuarantined:
		ev.deny("agent_state", ReasonAgentQuarantined, "agent is quarantined by an operator")
	default:
		// An unknown state is a caller bug; fail closed.
		ev.deny("agent_state", ReasonAgentPaused, fmt.Sprintf("unknown agent state %s", quoteTrunc(string(s))))
	}
}

// checkGlobalFreeze denies everything during an operator's emergency freeze.
func (ev *evaluation) checkGlobalFreeze() {
	if ev.req.GlobalFreeze {
		ev.deny("global_freeze", ReasonGlobalFreeze, "a global emergency freeze is in effect")
	} else {
		ev.pass("global_freeze", "not in effect")
	}
}

// findTemplate looks up the task's template. Without one, no later rule
// can be checked and it reports false.
func (ev *evaluation) findTemplate() bool {
	t, ok := ev.p.templates[ev.req.Task]
	if !ok {
		ev.deny("task", ReasonUnknownTask, fmt.Sprintf("no template named %s", quoteTrunc(ev.req.Task)))
		return false
	}
	ev.t = t
	ev.d.TemplateVersion, ev.d.Backend, ev.d.BackendType = t.Version, t.Backend, t.BackendType
	ev.pass("task", t.taskDetail)
	return true
}

// checkGrant checks that the agent's entry grants the template.
func (ev *evaluation) checkGrant() {
	switch name := ev.t.Name; {
	case ev.agent == nil:
		ev.skip("grant", "agent not registered")
	case ev.agent.Granted(name):
		ev.pass("grant", name+" is granted to "+ev.agent.Pattern)
	default:
		ev.deny("grant", ReasonTaskNotGranted, fmt.Sprintf("%s is not granted to %s", name, ev.agent.Pattern))
	}
}

// checkParams checks the request's parameters: unknown ones first (sorted,
// for a stable trace), then each declared one. The effective parameters
// reach the decision only when every one is valid.
func (ev *evaluation) checkParams() {
	t := ev.t
	ev.paramsOK = true
	if len(ev.req.Params) > 0 {
		var unknown []string
		for k := range ev.req.Params {
			if t.params[k] == nil {
				unknown = append(unknown, k)
			}
		}
		sort.Strings(unknown)
		for _, k := range unknown {
			ev.paramsOK = false
			ev.deny("param", ReasonUnknownParam, fmt.Sprintf("unknown parameter %s; %s", quoteTrunc(k), allowedParams(t)))
		}
	}
	ev.params = make(map[string]string, len(t.Params))
	for i := range t.Params {
		if !ev.checkParam(&t.Params[i]) {
			ev.paramsOK = false
		}
	}
	if ev.paramsOK {
		ev.d.Params = ev.params
	}
}

// checkParam checks one declared parameter, given or defaulted, and records
// its effective value; it reports whether the parameter is valid.
func (ev *evaluation) checkParam(pd *Param) bool {
	rule := "param." + pd.Name
	v, given := ev.req.Params[pd.Name]
	switch {
	case !given && pd.HasDefault:
		ev.params[pd.Name] = pd.Default
		ev.pass(rule, fmt.Sprintf("%q (default)", pd.Default))
	case !given:
		ev.deny(rule, ReasonMissingParam, fmt.Sprintf("parameter %s is required", pd.Name))
		return false
	default:
		if msg := ev.t.params[pd.Name].check(v); msg != "" {
			ev.deny(rule, ReasonParamConstraint, fmt.Sprintf("parameter %s: %s", pd.Name, msg))
			return false
		}
		ev.params[pd.Name] = v
		ev.pass(rule, strconv.Quote(v)+pd.suffix)
	}
	return true
}

// escalate starts from the template's base risk and runs its escalation
// rules, each of which can only raise the tier. The conditions read the
// parameters, so they are skipped when those are invalid.
func (ev *evaluation) escalate() {
	t := ev.t
	ev.level = t.riskLevel
	ev.d.TierWhy = []string{t.baseWhy}
	if len(t.Escalations) == 0 {
		return
	}
	if !ev.paramsOK {
		ev.skip("escalate", "parameters are invalid")
		return
	}
	act := newActivation(ev, ev.params, ev.agentVars(), t.Name, ev.req.Now)
	for _, e := range t.Escalations {
		out, _, err := e.cond.prog.Eval(act)
		switch {
		case err != nil:
			// A condition that cannot be evaluated raises the tier:
			// failing closed costs an approval, failing open could skip
			// one.
			ev.raise(e.rule, e.toLevel,
				fmt.Sprintf("%s: error %v; raised to %s (fail closed)", e.When, err, e.To),
				fmt.Sprintf("%s: %s failed to evaluate → %s", e.rule, e.When, e.To))
		case out == types.True:
			ev.raise(e.rule, e.toLevel, e.trueDetail, e.why)
		default:
			ev.pass(e.rule, e.falseDetail)
		}
	}
}

// raise records an escalation that fired: detail for the trace, why for
// the decision's TierWhy.
func (ev *evaluation) raise(rule string, level int, detail, why string) {
	ev.step(rule, ResultRaise, detail)
	ev.d.TierWhy = append(ev.d.TierWhy, why)
	ev.level = max(ev.level, level)
}

// prepareTrace sets the trace text of escalate[i].
func (e *Escalation) prepareTrace(i int) {
	e.rule = fmt.Sprintf("escalate[%d]", i)
	e.falseDetail = e.When + " is false"
	e.trueDetail = e.When + " is true → " + e.To
	e.why = e.rule + ": " + e.When + " → " + e.To
}

// settleTier fixes the risk tier escalation reached.
func (ev *evaluation) settleTier() {
	ev.tier = ev.p.tiers[ev.level]
	ev.d.Tier, ev.d.Alert = ev.tier.Name, ev.tier.Alert
	if len(ev.d.TierWhy) == 1 {
		ev.pass("tier", ev.t.baseWhy)
	} else {
		ev.pass("tier", strings.Join(ev.d.TierWhy, "; "))
	}
}

// settleTTL sets the lease TTL, requested or the template's default,
// clamped to the template's max_ttl and the tier's.
func (ev *evaluation) settleTTL() {
	t, tier, d := ev.t, ev.tier, &ev.d
	d.TTL, d.MaxTTL = t.TTL, t.MaxTTL
	why := t.ttlDefault
	if ev.req.TTL > 0 {
		d.TTL, why = ev.req.TTL, "requested "+fmtDuration(ev.req.TTL)
	}
	if tier.MaxTTL > 0 && tier.MaxTTL < d.MaxTTL {
		d.MaxTTL = tier.MaxTTL
	}
	if d.TTL > d.MaxTTL {
		limit := "template max_ttl"
		if d.MaxTTL < t.MaxTTL {
			limit = "tier " + tier.Name + " max_ttl"
		}
		why += fmt.Sprintf(", clamped to %s %s", limit, fmtDuration(d.MaxTTL))
		d.TTL = d.MaxTTL
	}
	ev.pass("ttl", why)
}

// checkWindows checks the template's freeze windows. When deny windows
// block, the decision says when none does any more, if ever.
func (ev *evaluation) checkWindows() {
	var denyRules []WindowRule
	var blockedUntil time.Time
	blocked, neverEnds := false, false
	for _, r := range ev.t.Windows {
		active := ev.windowActive(r.index)
		if r.Effect == EffectDeny {
			denyRules = append(denyRules, r)
		}
		if active == r.Outside {
			if active {
				ev.pass(r.rule, r.activeDetail)
			} else {
				ev.pass(r.rule, r.inactiveDetail)
			}
			continue
		}
		next, hasNext := ev.applyWindow(r, active)
		if r.Effect != EffectDeny {
			continue
		}
		switch {
		case !hasNext:
			neverEnds = true
		case !blocked || next.After(blockedUntil):
			blockedUntil = next
		}
		blocked = true
	}
	if blocked && !neverEnds {
		// Each blocking window blocks until its own change, so the latest
		// of those is a lower bound; from there, other windows may still
		// (or newly) block.
		ev.d.NextAllowedAt = ev.p.nextAllowed(denyRules, blockedUntil)
	}
}

// applyWindow records a window rule that applies now: a deny rule denies,
// a require_approval rule asks for an approval. It returns when the
// window next changes, if it does.
func (ev *evaluation) applyWindow(r WindowRule, active bool) (next time.Time, hasNext bool) {
	state := "inactive"
	if active {
		state = "active"
	}
	next, hasNext = ev.p.windowList[r.index].NextChange(ev.req.Now)
	detail, nextText := r.Window+" is "+state, ""
	if hasNext {
		nextText = next.Format(time.RFC3339)
		detail += "; changes at " + nextText
	}
	reason := Reason{Message: r.blockMessage, Window: r.Window, NextAllowedAt: next}
	if r.Effect == EffectDeny {
		if hasNext {
			reason.Message += "; next allowed at " + nextText
		}
		reason.Code = ReasonFrozen
		ev.step(r.rule, ResultDeny, detail)
		ev.denies = append(ev.denies, reason)
		return next, hasNext
	}
	ev.windowApproval = true
	reason.Code = ReasonWindowApproval
	ev.step(r.rule, ResultApproval, detail)
	ev.approvals = append(ev.approvals, reason)
	return next, hasNext
}

// prepareTrace sets the trace text and the reason's message of a window
// rule of template task, for window w.
func (r *WindowRule) prepareTrace(task string, w *Window) {
	where := "during"
	r.rule = "window." + r.Window
	if r.Outside {
		r.rule, where = "outside."+r.Window, "outside"
	}
	r.activeDetail = r.Window + " is active (" + w.String() + ")"
	r.inactiveDetail = r.Window + " is inactive (" + w.String() + ")"
	if r.Effect == EffectDeny {
		r.blockMessage = task + " is frozen " + where + " window " + r.Window + " (" + w.String() + ")"
	} else {
		r.blockMessage = task + " needs approval " + where + " window " + r.Window + " (" + w.String() + ")"
	}
}

// countApprovals sets how many approvals the request needs: the tier's,
// and at least one when a require_approval window applies. The tier's
// reason comes before the windows'.
func (ev *evaluation) countApprovals() {
	tier, d := ev.tier, &ev.d
	d.Approvals = tier.Approvals
	if tier.Approvals > 0 {
		ev.approvals = append([]Reason{{Code: ReasonTierApproval,
			Message: fmt.Sprintf("risk tier %s needs %d approval%s", tier.Name, tier.Approvals, plural(tier.Approvals))}}, ev.approvals...)
	}
	if ev.windowApproval && d.Approvals < 1 {
		d.Approvals = 1
	}
	if d.Approvals > 0 {
		ev.step("approval", ResultApproval, fmt.Sprintf("%d approval%s needed", d.Approvals, plural(d.Approvals)))
	} else {
		ev.pass("approval", "none needed")
	}
}

// renderOutputs renders what would be minted, from valid parameters only,
// and has the backend check it: what the backend would refuse at mint is
// denied here, before an approver is asked about it.
func (ev *evaluation) renderOutputs() {
	if !ev.paramsOK {
		ev.skip("render", "parameters are invalid")
		return
	}
	if err := ev.t.render(&ev.d, ev.params, ev.agentVars()); err != nil {
		ev.deny("render", ReasonRenderFailed, err.Error())
		return
	}
	ev.pass("render", renderDetail(&ev.d.Rendered))
	if c := ev.t.check; c != nil {
		if err := c.CheckRendered(ev.d.Rendered); err != nil {
			ev.deny("backend", ReasonBackendRefused, fmt.Sprintf("backend %s (%s) would refuse this request: %v", ev.t.Backend, ev.t.BackendType, err))
		} else {
			ev.pass("backend", ev.t.BackendType+" accepts what was rendered")
		}
	}
}

// finish sets the outcome: deny if any rule denied, else approval_required
// if any approval is needed, else allow.
func (ev *evaluation) finish() Decision {
	d := ev.d
	switch {
	case len(ev.denies) > 0:
		d.Outcome, d.Reasons = Deny, ev.denies
	case d.Approvals > 0:
		d.Outcome, d.Reasons = ApprovalRequired, ev.approvals
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
