package templates

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"regexp/syntax"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/latchbroker/latch/templates/strictyaml"
)

var (
	templateNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$`)
	identRE        = regexp.MustCompile(`^[a-z][a-z0-9_]{0,63}$`)
	rateRE         = regexp.MustCompile(`^([1-9][0-9]{0,8})/(s|m|h)$`)
)

// Limits on request values; see checkValue (charset.go).
const maxValueLen = 256

// Load validates and compiles a policy. Every problem found is reported,
// each as "file:line:col: message", in one strictyaml.Errors; on error the
// Policy is nil. Load is exactly what `latch check` and the server run.
func Load(src Source) (*Policy, error) {
	l := &loader{src: src, p: &Policy{
		templates:   map[string]*Template{},
		agentsExact: map[string]*Agent{},
		operators:   map[string]*Operator{},
		windows:     map[string]*Window{},
	}}
	l.loadTiers()
	l.loadWindows()
	l.loadOperators()
	env, err := newCELEnv(l.windowIndex)
	if err != nil {
		return nil, fmt.Errorf("templates: build CEL environment: %w", err)
	}
	l.p.env = env
	l.loadTemplates()
	l.loadAgents()
	if err := l.errs.Err(); err != nil {
		return nil, err
	}
	return l.p, nil
}

type loader struct {
	src         Source
	p           *Policy
	errs        strictyaml.Errors
	windowIndex map[string]int
	// broken holds templates that failed to load, so agents granting them
	// are not reported a second time as granting an unknown template.
	broken map[string]bool
	// defined is where each template name was first defined.
	defined map[string]strictyaml.Pos
}

func (l *loader) add(err error) { l.errs.Add(err) }

func (l *loader) errorf(p strictyaml.Pos, format string, args ...any) {
	l.errs = append(l.errs, p.Errorf(format, args...))
}

func (l *loader) loadTiers() {
	tiers, errs := buildTiers(l.src.Policy.RiskTiers)
	l.errs = append(l.errs, errs...)
	l.p.tiers = tiers
}

func (l *loader) loadWindows() {
	names := sortedKeys(l.src.Policy.FreezeWindows)
	l.windowIndex = make(map[string]int, len(names))
	for _, name := range names {
		cfg := l.src.Policy.FreezeWindows[name]
		if !templateNameRE.MatchString(name) {
			l.errorf(cfg.At, "freeze_windows.%s: window names are lowercase letters, digits and -", name)
			continue
		}
		w, err := NewWindow(name, cfg)
		if err != nil {
			l.add(err)
			// Keep a placeholder so templates naming it report the window's
			// own error only.
			w = &Window{Name: name, From: time.Unix(0, 0), Until: time.Unix(0, 0)}
		}
		l.windowIndex[name] = len(l.p.windowList)
		l.p.windowList = append(l.p.windowList, w)
		l.p.windows[name] = w
	}
}

func (l *loader) loadOperators() {
	first := map[string]strictyaml.Pos{}
	for i, oc := range l.src.Policy.Operators {
		path := fmt.Sprintf("operators[%d]", i)
		key, ok := l.operatorKey(path, oc)
		op := &Operator{ID: key}
		if p, dup := first[key]; ok && dup {
			l.errorf(oc.At, "%s: duplicate operator %q (first at line %d)", path, key, p.Line)
			ok = false
		} else if ok {
			first[key] = oc.At
		}
		if len(oc.Roles) == 0 {
			l.errorf(oc.At, "%s: roles is required; allowed: %s", path, strings.Join(roleNames, ", "))
			ok = false
		}
		seen := map[string]bool{}
		for j, r := range oc.Roles {
			at := posAt(oc.RolesAt, j, oc.At)
			switch {
			case !slices.Contains(roleNames, r):
				l.errorf(at, "%s.roles[%d]: unknown role %q; allowed: %s", path, j, r, strings.Join(roleNames, ", "))
				ok = false
			case seen[r]:
				l.errorf(at, "%s.roles[%d]: %q is listed twice", path, j, r)
			default:
				seen[r] = true
				op.Roles = append(op.Roles, Role(r))
			}
		}
		if ok {
			l.p.operators[op.ID] = op
			l.p.operatorList = append(l.p.operatorList, op)
		}
	}
}

// operatorKey is the key of an operators: entry: its SPIFFE ID, or
// "subject:S", "email:E" (lower case) or "group:G" for people.
func (l *loader) operatorKey(path string, oc OperatorConfig) (string, bool) {
	named := 0
	for _, v := range []string{oc.ID, oc.Subject, oc.Email, oc.Group} {
		if v != "" {
			named++
		}
	}
	switch {
	case named != 1:
		l.errorf(oc.At, "%s: name exactly one of id (a SPIFFE ID), subject, email or group (a person signed in through oidc:)", path)
		return "", false
	case oc.Subject != "":
		return "subject:" + oc.Subject, true
	case oc.Email != "":
		if !validEmail(oc.Email) {
			l.errorf(oc.At, "%s.email: %q is not an email address", path, oc.Email)
			return "", false
		}
		return "email:" + strings.ToLower(oc.Email), true
	case oc.Group != "":
		return "group:" + oc.Group, true
	}
	if _, err := spiffeid.FromString(oc.ID); err != nil {
		l.errorf(oc.IDAt, "%s.id: invalid SPIFFE ID %q: %v", path, oc.ID, err)
		return "", false
	}
	return oc.ID, true
}

// validEmail accepts what an owner or operator email plausibly is: one @,
// something on each side, no spaces or control characters.
func validEmail(s string) bool {
	at := strings.IndexByte(s, '@')
	if at <= 0 || at != strings.LastIndexByte(s, '@') || at == len(s)-1 || len(s) > 254 {
		return false
	}
	for _, r := range s {
		if r <= ' ' || r == 0x7f {
			return false
		}
	}
	return true
}

func (l *loader) loadAgents() {
	first := map[string]strictyaml.Pos{}
	for i, ac := range l.src.Policy.Agents {
		path := fmt.Sprintf("agents[%d]", i)
		a := &Agent{Pattern: ac.ID, Owner: ac.Owner, MaxActive: ac.MaxActive, granted: map[string]bool{}}
		ok := true
		if ac.ID == "" {
			l.errorf(ac.At, "%s: id is required (an exact SPIFFE ID, or a prefix ending in *)", path)
			ok = false
		} else if prefix, err := parseAgentPattern(ac.ID); err != nil {
			l.errorf(ac.IDAt, "%s.id: %v", path, err)
			ok = false
		} else if p, dup := first[ac.ID]; dup {
			l.errorf(ac.IDAt, "%s.id: duplicate agent %q (first at line %d)", path, ac.ID, p.Line)
			ok = false
		} else {
			a.prefix = prefix
			first[ac.ID] = ac.IDAt
		}
		if ac.Owner == "" {
			l.errorf(ac.At, "%s: owner is required (the SPIFFE ID or email of the person or team answerable for the agent)", path)
			ok = false
		} else if strings.Contains(ac.Owner, "@") && !strings.Contains(ac.Owner, "://") {
			if !validEmail(ac.Owner) {
				l.errorf(ac.OwnerAt, "%s.owner: %q is not an email address", path, ac.Owner)
				ok = false
			}
		} else if _, err := spiffeid.FromString(ac.Owner); err != nil {
			l.errorf(ac.OwnerAt, "%s.owner: invalid SPIFFE ID %q (or an email): %v", path, ac.Owner, err)
			ok = false
		}
		if len(ac.Templates) == 0 {
			l.errorf(ac.At, "%s: templates is required (the task templates this agent may use)", path)
			ok = false
		}
		for j, name := range ac.Templates {
			at := posAt(ac.TemplatesAt, j, ac.At)
			switch {
			case a.granted[name]:
				l.errorf(at, "%s.templates[%d]: %q is listed twice", path, j, name)
			case l.p.templates[name] == nil && !l.broken[name]:
				l.errorf(at, "%s.templates[%d]: unknown template %q", path, j, name)
				ok = false
			default:
				a.granted[name] = true
				a.Templates = append(a.Templates, name)
			}
		}
		if ac.Rate != "" {
			m := rateRE.FindStringSubmatch(ac.Rate)
			if m == nil {
				l.errorf(ac.RateAt, "%s.rate: expected N/s, N/m or N/h, such as 30/m, got %q", path, ac.Rate)
				ok = false
			} else {
				n, _ := strconv.Atoi(m[1])
				a.Rate = Rate{N: n, Per: map[string]time.Duration{"s": time.Second, "m": time.Minute, "h": time.Hour}[m[2]]}
			}
		}
		if ac.MaxActive < 0 {
			l.errorf(ac.MaxActiveAt, "%s.max_active: must not be negative", path)
			ok = false
		}
		if !ok {
			continue
		}
		a.detail = "matches " + a.Pattern + ", owner " + a.Owner
		l.p.agentList = append(l.p.agentList, a)
		if a.prefix != "" {
			l.p.agentPrefixes = append(l.p.agentPrefixes, a)
		} else {
			l.p.agentsExact[a.Pattern] = a
		}
	}
	sort.SliceStable(l.p.agentPrefixes, func(i, j int) bool {
		return len(l.p.agentPrefixes[i].prefix) > len(l.p.agentPrefixes[j].prefix)
	})
}

// parseAgentPattern checks an agents: id and returns its prefix (without
// "*") when it is a prefix pattern.
func parseAgentPattern(id string) (string, error) {
	star := strings.IndexByte(id, '*')
	if star < 0 {
		if _, err := spiffeid.FromString(id); err != nil {
			return "", fmt.Errorf("invalid SPIFFE ID %q: %v", id, err)
		}
		return "", nil
	}
	if star != len(id)-1 {
		return "", fmt.Errorf(`"*" may only end a prefix, as in spiffe://example.org/agent/report-*; got %q`, id)
	}
	prefix := id[:star]
	rest, ok := strings.CutPrefix(prefix, "spiffe://")
	td, _, hasPath := strings.Cut(rest, "/")
	if !ok || !hasPath || td == "" {
		return "", fmt.Errorf("a prefix must spell out the trust domain and a path, as in spiffe://example.org/agent/*; got %q", id)
	}
	// Any ID the prefix matches extends it; checking one such ID validates
	// the trust domain and the path characters so far.
	if _, err := spiffeid.FromString(prefix + "x"); err != nil {
		return "", fmt.Errorf("invalid SPIFFE ID prefix %q: %v", id, err)
	}
	return prefix, nil
}

func (l *loader) loadTemplates() {
	l.broken = map[string]bool{}
	l.defined = map[string]strictyaml.Pos{}
	for _, f := range l.src.Templates {
		tc, err := ParseTemplate(f.Name, f.Data)
		if err != nil {
			l.add(err)
			if tc != nil && tc.Name != "" {
				l.broken[tc.Name] = true
			}
			continue
		}
		t, ok := l.compileTemplate(f.Name, tc)
		if !ok {
			if tc.Name != "" {
				l.broken[tc.Name] = true
			}
			continue
		}
		l.p.templates[t.Name] = t
		l.p.templateList = append(l.p.templateList, t)
	}
	sort.Slice(l.p.templateList, func(i, j int) bool { return l.p.templateList[i].Name < l.p.templateList[j].Name })
}

// compileTemplate validates one template against the policy and compiles
// its conditions and renderers. Each stage adds what it finds wrong to
// l.errs, in the order of the template's keys; the template is kept only
// when none did.
func (l *loader) compileTemplate(file string, tc *TemplateConfig) (*Template, bool) {
	n0 := len(l.errs)
	fileAt := strictyaml.Pos{File: file, Line: 1, Col: 1}
	if !tc.At.IsZero() {
		fileAt = tc.At
	}
	t := &Template{
		Name: tc.Name, Description: tc.Description, Backend: tc.Backend,
		TTL: tc.TTL, MaxTTL: tc.MaxTTL, Risk: tc.Risk, MaxActive: tc.MaxActive, File: file,
		params: map[string]*Param{}, paramNames: map[string]bool{},
	}
	l.checkTemplateName(tc, fileAt)
	be := l.findBackend(t, tc, fileAt)
	l.compileParams(t, tc)
	l.checkTTLs(t, tc, fileAt)
	l.checkMaxActive(tc)
	l.checkRisk(t, tc, fileAt)
	l.compileEscalations(t, tc)
	l.compileWindowRules(t, tc)
	l.compileRenderers(t, tc, be)
	if len(l.errs) == n0 {
		l.trialRender(t, tc)
	}
	if len(l.errs) > n0 {
		return nil, false
	}
	t.Version = versionOf(t, tc)
	t.prepareTrace(l.p.windowList)
	return t, true
}

// checkTemplateName checks the name's form and that no other template
// already has it.
func (l *loader) checkTemplateName(tc *TemplateConfig, fileAt strictyaml.Pos) {
	switch {
	case tc.Name == "":
		l.errorf(fileAt, "name is required")
	case !templateNameRE.MatchString(tc.Name):
		l.errorf(tc.NameAt, "name: %q is not a valid template name (lowercase letters, digits and -, at most 64)", tc.Name)
	default:
		if p, dup := l.defined[tc.Name]; dup {
			l.errorf(tc.NameAt, "name: duplicate template %q (first defined at %s)", tc.Name, p)
		} else {
			l.defined[tc.Name] = tc.NameAt
		}
	}
}

// findBackend looks up the template's backend in the config and sets the
// template's backend type; an unknown backend gives the zero Backend.
func (l *loader) findBackend(t *Template, tc *TemplateConfig, fileAt strictyaml.Pos) Backend {
	if tc.Backend == "" {
		l.errorf(fileAt, "backend is required (a name from backends: in the config)")
		return Backend{}
	}
	be, ok := l.src.Backends[tc.Backend]
	if !ok {
		if len(l.src.Backends) == 0 {
			l.errorf(tc.BackendAt, "backend: unknown backend %q; no backends are configured", tc.Backend)
		} else {
			l.errorf(tc.BackendAt, "backend: unknown backend %q; configured: %s", tc.Backend, strings.Join(sortedKeys(l.src.Backends), ", "))
		}
	}
	t.BackendType = be.Type
	t.check = be.Check
	return be
}

// compileParams compiles the declared parameters, sorted by name. A
// parameter in error is still a known name, so conditions using it report
// nothing more.
func (l *loader) compileParams(t *Template, tc *TemplateConfig) {
	for _, name := range sortedKeys(tc.Params) {
		pc := tc.Params[name]
		if p, ok := l.compileParam(name, pc); ok {
			t.params[name] = p
			t.Params = append(t.Params, *p)
		}
		t.paramNames[name] = true
	}
}

// checkTTLs checks ttl and max_ttl; max_ttl defaults to ttl.
func (l *loader) checkTTLs(t *Template, tc *TemplateConfig, fileAt strictyaml.Pos) {
	switch {
	case tc.TTL == 0:
		l.errorf(fileAt, "ttl is required (the default lease TTL, such as 10m)")
	case tc.TTL < 0:
		l.errorf(tc.TTLAt, "ttl: must be positive")
	}
	if tc.MaxTTL < 0 {
		l.errorf(tc.MaxTTLAt, "max_ttl: must be positive")
	}
	if t.MaxTTL == 0 {
		t.MaxTTL = t.TTL
	}
	if tc.TTL > 0 && tc.MaxTTL > 0 && tc.TTL > tc.MaxTTL {
		l.errorf(tc.TTLAt, "ttl: %s exceeds max_ttl %s", fmtDuration(tc.TTL), fmtDuration(tc.MaxTTL))
	}
}

func (l *loader) checkMaxActive(tc *TemplateConfig) {
	if tc.MaxActive < 0 {
		l.errorf(tc.MaxActiveAt, "max_active: must not be negative")
	}
}

// checkRisk checks the base risk tier and sets the template's level.
func (l *loader) checkRisk(t *Template, tc *TemplateConfig, fileAt strictyaml.Pos) {
	switch lvl, ok := tierLevel(tc.Risk); {
	case tc.Risk == "":
		l.errorf(fileAt, "risk is required; allowed: %s", strings.Join(tierNames, ", "))
	case !ok:
		l.errorf(tc.RiskAt, "risk: %s", unknownTier(tc.Risk))
	default:
		t.riskLevel = lvl
	}
}

func (l *loader) compileEscalations(t *Template, tc *TemplateConfig) {
	for i, ec := range tc.Escalate {
		if e, ok := l.compileEscalation(t, i, ec); ok {
			t.Escalations = append(t.Escalations, e)
		}
	}
}

// compileEscalation compiles the condition of escalate[i] and checks that
// its tier raises the template's risk.
func (l *loader) compileEscalation(t *Template, i int, ec EscalateConfig) (Escalation, bool) {
	path := fmt.Sprintf("escalate[%d]", i)
	e := Escalation{When: ec.When, To: ec.To}
	ok := true
	if ec.When == "" {
		l.errorf(ec.At, "%s: when is required (a CEL condition)", path)
		ok = false
	} else if cond, err := compileCond(l.p.env, ec.When, t.paramNames); err != nil {
		l.errorf(ec.WhenAt, "%s.when: %v", path, err)
		ok = false
	} else {
		e.cond = cond
	}
	switch lvl, known := tierLevel(ec.To); {
	case ec.To == "":
		l.errorf(ec.At, "%s: to is required; allowed: %s", path, strings.Join(tierNames, ", "))
		ok = false
	case !known:
		l.errorf(ec.ToAt, "%s.to: %s", path, unknownTier(ec.To))
		ok = false
	case t.Risk != "" && lvl <= t.riskLevel:
		l.errorf(ec.ToAt, "%s.to: %s does not raise risk %s; escalation can only raise a tier", path, ec.To, t.Risk)
		ok = false
	default:
		e.toLevel = lvl
	}
	return e, ok
}

func (l *loader) compileWindowRules(t *Template, tc *TemplateConfig) {
	for i, wc := range tc.Windows {
		if r, ok := l.compileWindowRule(i, wc); ok {
			t.Windows = append(t.Windows, r)
		}
	}
}

// compileWindowRule checks windows[i]: one known window, during it or
// outside it, and an effect.
func (l *loader) compileWindowRule(i int, wc WindowRuleConfig) (WindowRule, bool) {
	path := fmt.Sprintf("windows[%d]", i)
	r := WindowRule{Effect: wc.Effect}
	name, at := wc.Window, wc.WindowAt
	switch {
	case wc.Window != "" && wc.Outside != "":
		l.errorf(wc.At, "%s: set window or outside, not both", path)
		return r, false
	case wc.Window == "" && wc.Outside == "":
		l.errorf(wc.At, "%s: needs window (effect during it) or outside (effect outside it)", path)
		return r, false
	case wc.Outside != "":
		name, at, r.Outside = wc.Outside, wc.OutsideAt, true
	}
	r.Window = name
	idx, known := l.windowIndex[name]
	if !known {
		key := "window"
		if r.Outside {
			key = "outside"
		}
		defined := "none are defined"
		if len(l.windowIndex) > 0 {
			defined = "defined: " + strings.Join(sortedKeys(l.windowIndex), ", ")
		}
		l.errorf(at, "%s.%s: unknown freeze window %q; %s", path, key, name, defined)
		return r, false
	}
	r.index = idx
	switch wc.Effect {
	case EffectDeny, EffectRequireApproval:
		return r, true
	case "":
		l.errorf(wc.At, "%s: effect is required; allowed: deny, require_approval", path)
	default:
		l.errorf(wc.EffectAt, "%s.effect: unknown effect %q; allowed: deny, require_approval", path, wc.Effect)
	}
	return r, false
}

// compileParam compiles one parameter: its allow: list first, since the
// enum values, the pattern and the default are checked against the
// characters it allows.
func (l *loader) compileParam(name string, pc ParamConfig) (*Param, bool) {
	path := "params." + name
	n0 := len(l.errs)
	p := &Param{Name: name, Enum: pc.Enum, Pattern: pc.Pattern, Allow: pc.Allow, Description: pc.Description}
	if !identRE.MatchString(name) {
		l.errorf(pc.At, "%s: parameter names are lowercase letters, digits and _, starting with a letter", path)
	}
	p.chars = l.compileAllowList(path, pc)
	switch {
	case pc.Enum == nil && pc.Pattern == "":
		l.errorf(pc.At, "%s: needs enum or pattern; a free-form parameter would let a request widen its own policy", path)
	case pc.Enum != nil && pc.Pattern != "":
		l.errorf(pc.At, "%s: set enum or pattern, not both", path)
	case pc.Enum != nil:
		l.compileEnum(p, path, pc)
	default:
		l.compilePattern(p, path, pc)
	}
	if p.enum != nil {
		p.suffix = " in [" + strings.Join(p.Enum, " ") + "]"
	} else {
		p.suffix = " matches " + p.Pattern
	}
	if pc.Default != nil {
		p.Default, p.HasDefault = *pc.Default, true
		if len(l.errs) == n0 {
			if msg := p.check(p.Default); msg != "" {
				l.errorf(pc.DefaultAt, "%s.default: %s", path, msg)
			}
		}
	}
	return p, len(l.errs) == n0
}

// compileAllowList checks allow: and returns the characters it admits.
func (l *loader) compileAllowList(path string, pc ParamConfig) charSet {
	cs, bad := compileAllow(pc.Allow)
	for i := range pc.Allow {
		if msg, ok := bad[i]; ok {
			l.errorf(posAt(pc.AllowAt, i, pc.At), "%s.allow[%d]: %s", path, i, msg)
		}
	}
	return cs
}

// compileEnum checks every enum value with the rule every request value
// meets, so an enum cannot list what a request could not send.
func (l *loader) compileEnum(p *Param, path string, pc ParamConfig) {
	if len(pc.Enum) == 0 {
		l.errorf(pc.At, "%s.enum: must list at least one value", path)
	}
	p.enum = make(map[string]bool, len(pc.Enum))
	for i, v := range pc.Enum {
		at := posAt(pc.EnumAt, i, pc.At)
		if p.enum[v] {
			l.errorf(at, "%s.enum[%d]: %q is listed twice", path, i, v)
		} else if msg := checkValue(v, p.chars); msg != "" {
			l.errorf(at, "%s.enum[%d]: %q %s%s", path, i, v, msg, optInHint(v, p.chars))
		}
		p.enum[v] = true
	}
}

// compilePattern compiles the pattern and refuses one that admits a
// character the parameter does not allow.
func (l *loader) compilePattern(p *Param, path string, pc ParamConfig) {
	re, err := compileAnchored(pc.Pattern)
	if err == nil {
		err = checkPatternChars(pc.Pattern, p.chars, path)
	}
	if err != nil {
		l.errorf(pc.PatternAt, "%s.pattern: %v", path, err)
		return
	}
	p.re = re
}

// compileAnchored compiles a parameter pattern, insisting that it is
// anchored at both ends as a whole: "^a|b$" is rejected because it matches
// any value ending in b.
func compileAnchored(pattern string) (*regexp.Regexp, error) {
	re, err := regexp.Compile(pattern)
	if err != nil {
		return nil, fmt.Errorf("invalid regular expression: %v", strings.TrimPrefix(err.Error(), "error parsing regexp: "))
	}
	parsed, err := syntax.Parse(pattern, syntax.Perl)
	if err != nil {
		return nil, fmt.Errorf("invalid regular expression: %v", err)
	}
	anchored := parsed.Op == syntax.OpConcat && len(parsed.Sub) >= 2 &&
		parsed.Sub[0].Op == syntax.OpBeginText && parsed.Sub[len(parsed.Sub)-1].Op == syntax.OpEndText
	if !anchored {
		return nil, fmt.Errorf("%q must be anchored: start with ^ and end with $ around the whole pattern (group alternatives: ^(a|b)$)", pattern)
	}
	return re, nil
}

// check validates a value against the parameter; "" means it passes.
func (p *Param) check(v string) string {
	if msg := checkValue(v, p.chars); msg != "" {
		return quoteTrunc(v) + " " + msg
	}
	if p.enum != nil {
		if !p.enum[v] {
			return fmt.Sprintf("%s is not one of %s", quoteTrunc(v), strings.Join(p.Enum, ", "))
		}
		return ""
	}
	if p.re != nil && !p.re.MatchString(v) {
		return fmt.Sprintf("%s does not match %s", quoteTrunc(v), p.Pattern)
	}
	return ""
}

func quoteTrunc(v string) string {
	if len(v) > 64 {
		return strconv.Quote(v[:64]) + "…"
	}
	return strconv.Quote(v)
}

func (l *loader) compileRenderers(t *Template, tc *TemplateConfig, be Backend) {
	compile := func(name, text string, at strictyaml.Pos) *renderer {
		r, err := compileText(name, text)
		if err != nil {
			l.errorf(at, "%s: %v", name, err)
			return nil
		}
		return r
	}
	for _, name := range sortedKeys(tc.Vars) {
		at := tc.VarsAt[name]
		if !identRE.MatchString(name) {
			l.errorf(at, "vars.%s: var names are lowercase letters, digits and _, starting with a letter", name)
			continue
		}
		if r := compile("vars."+name, tc.Vars[name], at); r != nil {
			t.vars = append(t.vars, namedRenderer{name: name, r: r})
		}
	}
	isToken, isPKI := be.Type == BackendVaultToken, be.Type == BackendVaultPKI
	switch {
	case tc.Policy != "" && be.Type != "" && !isToken:
		l.errorf(tc.PolicyAt, "policy: only vault-token backends use a policy; backend %q is %s", tc.Backend, be.Type)
	case tc.Policy == "" && isToken:
		l.errorf(tc.BackendAt, "backend: %q is a vault-token backend, which needs a policy: to render", tc.Backend)
	case tc.Policy != "":
		t.policy = compile("policy", tc.Policy, tc.PolicyAt)
	}
	switch {
	case tc.Names != nil && be.Type != "" && !isPKI:
		l.errorf(tc.NamesAt, "names: only vault-pki backends issue certificates; backend %q is %s", tc.Backend, be.Type)
	case tc.Names == nil && isPKI:
		l.errorf(tc.BackendAt, "backend: %q is a vault-pki backend, which needs names: with a common_name", tc.Backend)
	case tc.Names != nil:
		nc := tc.Names
		if nc.CommonName == "" {
			l.errorf(nc.At, "names: common_name is required")
		}
		nr := &namesRenderer{}
		if nc.CommonName != "" {
			nr.commonName = compile("names.common_name", nc.CommonName, nc.CommonNameAt)
		}
		list := func(key string, texts []string, ats []strictyaml.Pos) []*renderer {
			var rs []*renderer
			for i, s := range texts {
				rs = append(rs, compile(fmt.Sprintf("names.%s[%d]", key, i), s, posAt(ats, i, nc.At)))
			}
			return rs
		}
		nr.altNames = list("alt_names", nc.AltNames, nc.AltNamesAt)
		nr.uriSANs = list("uri_sans", nc.URISANs, nc.URISANsAt)
		nr.ipSANs = list("ip_sans", nc.IPSANs, nc.IPSANsAt)
		t.names = nr
	}
	if be.Path != "" {
		r, err := compileText("path", be.Path)
		if err != nil {
			l.errorf(be.PathAt, "path: %v", err)
		} else {
			t.path = r
		}
	} else if be.Type == BackendVaultLease {
		l.errorf(tc.BackendAt, "backend: vault-lease backend %q has no path", tc.Backend)
	}
}

// trialRender renders every template once with sample parameter values, so
// a reference to an undeclared parameter or var fails at load, not at
// request time.
func (l *loader) trialRender(t *Template, tc *TemplateConfig) {
	params := map[string]string{}
	for _, p := range t.Params {
		switch {
		case p.HasDefault:
			params[p.Name] = p.Default
		case len(p.Enum) > 0:
			params[p.Name] = p.Enum[0]
		default:
			params[p.Name] = "x"
		}
	}
	d := &renderData{
		params: params, vars: map[string]string{}, task: t.Name,
		agent: map[string]string{"id": "spiffe://example.org/agent", "owner": "spiffe://example.org/owner"},
	}
	check := func(r *renderer, at strictyaml.Pos, hasVars bool, prefix string) {
		if r == nil {
			return
		}
		d.hasVars = hasVars
		slow := r.parts
		r.parts = nil
		want, err := r.render(d)
		r.parts = slow
		if err != nil {
			l.errorf(at, "%s%v", prefix, err)
			return
		}
		if got, err := r.render(d); err != nil || got != want {
			r.parts = nil // never let the fast path disagree with text/template
		}
	}
	for _, v := range t.vars {
		check(v.r, tc.VarsAt[v.name], false, "")
		if s, err := v.r.render(d); err == nil {
			d.vars[v.name] = s
		}
	}
	check(t.policy, tc.PolicyAt, true, "")
	// The path is written in the backend's config, but what it needs (vars)
	// is this template's business, so the error points here.
	check(t.path, tc.BackendAt, true, fmt.Sprintf("backend: the path of %q does not render for this template: ", tc.Backend))
	if nr := t.names; nr != nil && tc.Names != nil {
		check(nr.commonName, tc.Names.CommonNameAt, true, "")
		for i, r := range nr.altNames {
			check(r, posAt(tc.Names.AltNamesAt, i, tc.Names.At), true, "")
		}
		for i, r := range nr.uriSANs {
			check(r, posAt(tc.Names.URISANsAt, i, tc.Names.At), true, "")
		}
		for i, r := range nr.ipSANs {
			check(r, posAt(tc.Names.IPSANsAt, i, tc.Names.At), true, "")
		}
	}
}

// versionOf hashes the template's meaning: effective values, in a fixed
// order, with maps sorted by encoding/json. Formatting, comments and key
// order in the file do not change it.
func versionOf(t *Template, tc *TemplateConfig) string {
	type param struct {
		Enum        []string `json:"enum,omitempty"`
		Pattern     string   `json:"pattern,omitempty"`
		Allow       []string `json:"allow,omitempty"`
		Default     *string  `json:"default,omitempty"`
		Description string   `json:"description,omitempty"`
	}
	type names struct {
		CommonName string   `json:"common_name"`
		AltNames   []string `json:"alt_names,omitempty"`
		URISANs    []string `json:"uri_sans,omitempty"`
		IPSANs     []string `json:"ip_sans,omitempty"`
	}
	type escalate struct {
		When string `json:"when"`
		To   string `json:"to"`
	}
	type window struct {
		Window  string `json:"window,omitempty"`
		Outside string `json:"outside,omitempty"`
		Effect  string `json:"effect"`
	}
	c := struct {
		Format      int               `json:"format"`
		Name        string            `json:"name"`
		Description string            `json:"description,omitempty"`
		Backend     string            `json:"backend"`
		Params      map[string]param  `json:"params,omitempty"`
		Vars        map[string]string `json:"vars,omitempty"`
		Policy      string            `json:"policy,omitempty"`
		Names       *names            `json:"names,omitempty"`
		TTL         string            `json:"ttl"`
		MaxTTL      string            `json:"max_ttl"`
		Risk        string            `json:"risk"`
		Escalate    []escalate        `json:"escalate,omitempty"`
		Windows     []window          `json:"windows,omitempty"`
		MaxActive   int               `json:"max_active,omitempty"`
	}{
		Format: 1, Name: tc.Name, Description: tc.Description, Backend: tc.Backend,
		Vars: tc.Vars, Policy: tc.Policy,
		TTL: t.TTL.String(), MaxTTL: t.MaxTTL.String(), Risk: tc.Risk, MaxActive: tc.MaxActive,
	}
	if len(tc.Params) > 0 {
		c.Params = map[string]param{}
		for k, p := range tc.Params {
			c.Params[k] = param{Enum: p.Enum, Pattern: p.Pattern, Allow: p.Allow, Default: p.Default, Description: p.Description}
		}
	}
	if n := tc.Names; n != nil {
		c.Names = &names{CommonName: n.CommonName, AltNames: n.AltNames, URISANs: n.URISANs, IPSANs: n.IPSANs}
	}
	for _, e := range tc.Escalate {
		c.Escalate = append(c.Escalate, escalate{When: e.When, To: e.To})
	}
	for _, w := range tc.Windows {
		c.Windows = append(c.Windows, window{Window: w.Window, Outside: w.Outside, Effect: w.Effect})
	}
	b, err := json.Marshal(c)
	if err != nil {
		panic("templates: marshal canonical template: " + err.Error()) // plain data; cannot fail
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func posAt(ps []strictyaml.Pos, i int, fallback strictyaml.Pos) strictyaml.Pos {
	if i < len(ps) {
		return ps[i]
	}
	return fallback
}
