package templates

import (
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/google/cel-go/cel"
)

// Policy is a loaded, validated and compiled policy: agents, operators,
// freeze windows, risk tiers and templates. It is immutable and safe for
// concurrent use; a config reload builds a new one.
type Policy struct {
	templates    map[string]*Template
	templateList []*Template

	agentsExact   map[string]*Agent
	agentPrefixes []*Agent // longest prefix first
	agentList     []*Agent

	operators    map[string]*Operator
	operatorList []*Operator

	windows    map[string]*Window
	windowList []*Window // index = position in sorted names, as used by CEL

	tiers []Tier // indexed by level
	env   *cel.Env
}

// Agent is one registered agent (an exact SPIFFE ID or an ID prefix).
type Agent struct {
	// Pattern is the ID as configured, with its trailing "*" if a prefix.
	Pattern   string
	Owner     string
	Templates []string
	Rate      Rate
	MaxActive int

	prefix  string // without "*", when a prefix pattern
	granted map[string]bool
	detail  string // trace detail when it matches, precomputed for Evaluate
}

// IsPrefix reports whether the agent entry matches a family of IDs.
func (a *Agent) IsPrefix() bool { return a.prefix != "" }

// Granted reports whether the agent may use the named template.
func (a *Agent) Granted(task string) bool { return a.granted[task] }

// Rate is a request rate limit; zero means none. The broker enforces it.
type Rate struct {
	N   int
	Per time.Duration
}

// Role is an operator role.
type Role string

// Operator roles. The broker decides what each may do; templates only
// validates the names.
const (
	RoleViewer   Role = "viewer"
	RoleApprover Role = "approver"
	RoleRevoker  Role = "revoker"
	RoleAdmin    Role = "admin"
)

var roleNames = []string{string(RoleViewer), string(RoleApprover), string(RoleRevoker), string(RoleAdmin)}

// Operator is one entry of operators:, or the roles a person holds
// through every entry that names them (Policy.Person).
type Operator struct {
	// ID is the SPIFFE ID; for a person's entry, "subject:S",
	// "email:E" or "group:G", and for a person, their actor ID.
	ID    string
	Roles []Role
}

// Has reports whether the operator holds role r.
func (o *Operator) Has(r Role) bool {
	for _, x := range o.Roles {
		if x == r {
			return true
		}
	}
	return false
}

// Template is one compiled task template.
type Template struct {
	Name        string
	Description string
	Backend     string
	BackendType string
	Params      []Param // sorted by name
	TTL         time.Duration
	MaxTTL      time.Duration
	Risk        string
	Escalations []Escalation
	Windows     []WindowRule
	MaxActive   int
	// Version is "sha256:" and the hex SHA-256 of the template's canonical
	// content: the same for the same meaning, whatever the formatting,
	// comments or key order. Leases record it; drift detection compares it.
	Version string
	// File is where the template was loaded from.
	File string

	params     map[string]*Param
	paramNames map[string]bool
	vars       []namedRenderer // sorted by name
	policy     *renderer
	path       *renderer   // from the backend's config, vault-lease
	check      RenderCheck // the backend's check of rendered outputs; nil: none
	names      *namesRenderer
	riskLevel  int
	// Trace details that do not depend on the request, precomputed so
	// Evaluate formats nothing on its common path (see prepareTrace).
	taskDetail, baseWhy, ttlDefault string
}

// Param is one declared parameter.
type Param struct {
	Name    string
	Enum    []string
	Pattern string
	// Allow lists the opt-ins to characters beyond the default set, such
	// as "slash"; see ParamConfig.
	Allow       []string
	Default     string
	HasDefault  bool
	Description string

	chars  charSet
	enum   map[string]bool
	re     *regexp.Regexp
	suffix string // " in [a b]" or " matches ^…$", for the trace
}

// Escalation is one compiled escalate: rule.
type Escalation struct {
	When string
	To   string

	toLevel int
	cond    *compiledCond

	rule, falseDetail, trueDetail, why string // precomputed trace text
}

// Effects a window rule can have.
const (
	EffectDeny            = "deny"
	EffectRequireApproval = "require_approval"
)

// WindowRule applies a freeze window to a template.
type WindowRule struct {
	Window string
	// Outside is true for `outside: X` rules: the effect applies while the
	// window is not active.
	Outside bool
	Effect  string

	index int // into Policy.windowList

	// Precomputed trace and reason text.
	rule, activeDetail, inactiveDetail, blockMessage string
}

type namedRenderer struct {
	name string
	r    *renderer
}

type namesRenderer struct {
	commonName *renderer
	altNames   []*renderer
	uriSANs    []*renderer
	ipSANs     []*renderer
}

// Template returns the named template.
func (p *Policy) Template(name string) (*Template, bool) {
	t, ok := p.templates[name]
	return t, ok
}

// Templates returns every template, sorted by name.
func (p *Policy) Templates() []*Template { return append([]*Template(nil), p.templateList...) }

// Agents returns every agent entry in config order.
func (p *Policy) Agents() []*Agent { return append([]*Agent(nil), p.agentList...) }

// Agent returns the entry that governs the SPIFFE ID id: an exact entry, or
// else the longest matching prefix.
func (p *Policy) Agent(id string) (*Agent, bool) {
	if a, ok := p.agentsExact[id]; ok {
		return a, true
	}
	for _, a := range p.agentPrefixes {
		if strings.HasPrefix(id, a.prefix) {
			return a, true
		}
	}
	return nil, false
}

// Operators returns every operator in config order.
func (p *Policy) Operators() []*Operator { return append([]*Operator(nil), p.operatorList...) }

// Operator returns the operator with SPIFFE ID id.
func (p *Policy) Operator(id string) (*Operator, bool) {
	if strings.Contains(id, ":") && !strings.HasPrefix(id, "spiffe://") {
		return nil, false // a person's entry key, never a caller's ID
	}
	o, ok := p.operators[id]
	return o, ok
}

// Person returns the roles of a person signed in through the OpenID
// Provider: every role of every entry that names their subject, their
// email (only when the provider verified it: pass "" otherwise) or one of
// their groups. actor is the ID the returned Operator carries.
func (p *Policy) Person(actor, subject, email string, groups []string) (*Operator, bool) {
	keys := []string{"subject:" + subject}
	if email != "" {
		keys = append(keys, "email:"+strings.ToLower(email))
	}
	for _, g := range groups {
		keys = append(keys, "group:"+g)
	}
	person := &Operator{ID: actor}
	found := false
	for _, k := range keys {
		o, ok := p.operators[k]
		if !ok {
			continue
		}
		found = true
		for _, r := range o.Roles {
			if !person.Has(r) {
				person.Roles = append(person.Roles, r)
			}
		}
	}
	return person, found
}

// Window returns the named freeze window.
func (p *Policy) Window(name string) (*Window, bool) {
	w, ok := p.windows[name]
	return w, ok
}

// WindowNames returns the freeze window names, sorted.
func (p *Policy) WindowNames() []string {
	names := make([]string, len(p.windowList))
	for i, w := range p.windowList {
		names[i] = w.Name
	}
	return names
}

// Tiers returns the risk tiers, lowest first.
func (p *Policy) Tiers() []Tier { return append([]Tier(nil), p.tiers...) }

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
