package templates

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/latchbroker/latch/templates/strictyaml"
)

// PolicyConfig is the policy part of latch.yaml, in the file's shape. The
// caller (cmd/latch) decodes it together with the rest of the config, so one
// strict decode covers the whole file; Load validates and compiles it.
type PolicyConfig struct {
	Operators     []OperatorConfig        `yaml:"operators"`
	Agents        []AgentConfig           `yaml:"agents"`
	FreezeWindows map[string]WindowConfig `yaml:"freeze_windows"`
	RiskTiers     map[string]TierConfig   `yaml:"risk_tiers"`
}

// OperatorConfig is one entry of operators:. It names exactly one of: a
// SPIFFE ID (id), or a person signed in through the oidc: provider by
// their subject (the ID token's sub), their verified email, or a group
// they belong to (the oidc: groups claim).
type OperatorConfig struct {
	ID      string   `yaml:"id"`
	Subject string   `yaml:"subject"`
	Email   string   `yaml:"email"`
	Group   string   `yaml:"group"`
	Roles   []string `yaml:"roles"`

	At      strictyaml.Pos   `yaml:",pos"`
	IDAt    strictyaml.Pos   `yaml:"id,pos"`
	RolesAt []strictyaml.Pos `yaml:"roles,pos"`
}

// AgentConfig is one entry of agents:.
type AgentConfig struct {
	// ID is an exact SPIFFE ID or a prefix ending in "*".
	ID        string   `yaml:"id"`
	Owner     string   `yaml:"owner"`
	Templates []string `yaml:"templates"`
	// Rate is "N/s", "N/m" or "N/h"; empty means no rate limit.
	Rate      string `yaml:"rate"`
	MaxActive int    `yaml:"max_active"`

	At          strictyaml.Pos   `yaml:",pos"`
	IDAt        strictyaml.Pos   `yaml:"id,pos"`
	OwnerAt     strictyaml.Pos   `yaml:"owner,pos"`
	TemplatesAt []strictyaml.Pos `yaml:"templates,pos"`
	RateAt      strictyaml.Pos   `yaml:"rate,pos"`
	MaxActiveAt strictyaml.Pos   `yaml:"max_active,pos"`
}

// WindowConfig is one entry of freeze_windows:, either recurring (cron,
// duration, timezone) or absolute (from, until; RFC 3339 with offsets).
type WindowConfig struct {
	Cron     string        `yaml:"cron"`
	Duration time.Duration `yaml:"duration"`
	Timezone string        `yaml:"timezone"`
	From     string        `yaml:"from"`
	Until    string        `yaml:"until"`

	At         strictyaml.Pos `yaml:",pos"`
	CronAt     strictyaml.Pos `yaml:"cron,pos"`
	DurationAt strictyaml.Pos `yaml:"duration,pos"`
	TimezoneAt strictyaml.Pos `yaml:"timezone,pos"`
	FromAt     strictyaml.Pos `yaml:"from,pos"`
	UntilAt    strictyaml.Pos `yaml:"until,pos"`
}

// TierConfig overrides one risk tier's defaults (see DefaultTiers). Absent
// fields keep the default.
type TierConfig struct {
	Approvals *int          `yaml:"approvals"`
	MaxTTL    time.Duration `yaml:"max_ttl"`
	Alert     *bool         `yaml:"alert"`

	At          strictyaml.Pos `yaml:",pos"`
	ApprovalsAt strictyaml.Pos `yaml:"approvals,pos"`
	MaxTTLAt    strictyaml.Pos `yaml:"max_ttl,pos"`
}

// TemplateConfig is one file of templates_dir, in the file's shape.
type TemplateConfig struct {
	Name        string                 `yaml:"name"`
	Description string                 `yaml:"description"`
	Backend     string                 `yaml:"backend"`
	Params      map[string]ParamConfig `yaml:"params"`
	Vars        map[string]string      `yaml:"vars"`
	Policy      string                 `yaml:"policy"`
	Names       *NamesConfig           `yaml:"names"`
	TTL         time.Duration          `yaml:"ttl"`
	MaxTTL      time.Duration          `yaml:"max_ttl"`
	Risk        string                 `yaml:"risk"`
	Escalate    []EscalateConfig       `yaml:"escalate"`
	Windows     []WindowRuleConfig     `yaml:"windows"`
	MaxActive   int                    `yaml:"max_active"`

	At          strictyaml.Pos            `yaml:",pos"`
	NameAt      strictyaml.Pos            `yaml:"name,pos"`
	BackendAt   strictyaml.Pos            `yaml:"backend,pos"`
	VarsAt      map[string]strictyaml.Pos `yaml:"vars,pos"`
	PolicyAt    strictyaml.Pos            `yaml:"policy,pos"`
	NamesAt     strictyaml.Pos            `yaml:"names,pos"`
	TTLAt       strictyaml.Pos            `yaml:"ttl,pos"`
	MaxTTLAt    strictyaml.Pos            `yaml:"max_ttl,pos"`
	RiskAt      strictyaml.Pos            `yaml:"risk,pos"`
	MaxActiveAt strictyaml.Pos            `yaml:"max_active,pos"`
}

// ParamConfig constrains one request parameter. Exactly one of Enum or
// Pattern is required: a free-form parameter would let a request widen the
// policy rendered from it. A parameter with a Default is optional.
//
// Whatever the enum or pattern, a value holds only letters, digits and
// . _ : @ - unless Allow opts the parameter in to more: "slash" admits /
// between non-empty segments that are not . or .. (see charset.go). An
// enum value or a pattern that would admit anything else does not load.
type ParamConfig struct {
	Enum        []string `yaml:"enum"`
	Pattern     string   `yaml:"pattern"`
	Allow       []string `yaml:"allow"`
	Default     *string  `yaml:"default"`
	Description string   `yaml:"description"`

	At        strictyaml.Pos   `yaml:",pos"`
	EnumAt    []strictyaml.Pos `yaml:"enum,pos"`
	PatternAt strictyaml.Pos   `yaml:"pattern,pos"`
	AllowAt   []strictyaml.Pos `yaml:"allow,pos"`
	DefaultAt strictyaml.Pos   `yaml:"default,pos"`
}

// NamesConfig holds the certificate names a vault-pki template issues; each
// is a text/template rendered like the policy.
type NamesConfig struct {
	CommonName string   `yaml:"common_name"`
	AltNames   []string `yaml:"alt_names"`
	URISANs    []string `yaml:"uri_sans"`
	IPSANs     []string `yaml:"ip_sans"`

	At           strictyaml.Pos   `yaml:",pos"`
	CommonNameAt strictyaml.Pos   `yaml:"common_name,pos"`
	AltNamesAt   []strictyaml.Pos `yaml:"alt_names,pos"`
	URISANsAt    []strictyaml.Pos `yaml:"uri_sans,pos"`
	IPSANsAt     []strictyaml.Pos `yaml:"ip_sans,pos"`
}

// EscalateConfig raises the tier to To when the CEL expression When is true.
type EscalateConfig struct {
	When string `yaml:"when"`
	To   string `yaml:"to"`

	At     strictyaml.Pos `yaml:",pos"`
	WhenAt strictyaml.Pos `yaml:"when,pos"`
	ToAt   strictyaml.Pos `yaml:"to,pos"`
}

// WindowRuleConfig applies a freeze window to a template: Effect during
// Window, or Effect outside Outside. Exactly one of the two is set.
type WindowRuleConfig struct {
	Window  string `yaml:"window"`
	Outside string `yaml:"outside"`
	Effect  string `yaml:"effect"`

	At        strictyaml.Pos `yaml:",pos"`
	WindowAt  strictyaml.Pos `yaml:"window,pos"`
	OutsideAt strictyaml.Pos `yaml:"outside,pos"`
	EffectAt  strictyaml.Pos `yaml:"effect,pos"`
}

// File is one template file's name (as shown in errors) and contents.
type File struct {
	Name string
	Data []byte
}

// Backend is what templates needs to know about one configured backend.
type Backend struct {
	// Type is the backend type: vault-token, vault-lease, vault-pki, or a
	// type templates has no special checks for.
	Type string
	// Path is the vault-lease engine path, a text/template rendered over the
	// same data as a template's policy (.params, .vars, .agent, .task).
	Path string
	// PathAt is where Path is written in the config, for errors.
	PathAt strictyaml.Pos
	// Check, when set, is the backend's own check of what a template
	// rendered for one request (the path's shape, certificate name
	// syntax). Evaluate runs it, so a request the backend would refuse is
	// denied before anyone is asked to approve it, and `latch explain`
	// shows why; the backend runs the same check again at mint.
	// backends/catalog sets it, so templates imports no backend.
	Check RenderCheck
}

// RenderCheck is a backend's check of rendered outputs. CheckRendered
// returns nil when the backend would accept r, else an error whose message
// says what is wrong; it is shown to the agent and to operators, so it
// names rendered values (which explain shows anyway) and nothing else.
// Implementations must be pure, fast and safe for concurrent use: they
// run inside Evaluate. Comparable values (a backend's Config struct) keep
// Backend comparable.
type RenderCheck interface {
	CheckRendered(r Rendered) error
}

// Backend types templates knows how to check.
const (
	BackendVaultToken = "vault-token"
	BackendVaultLease = "vault-lease"
	BackendVaultPKI   = "vault-pki"
)

// Source is everything Load needs: the config's policy sections, the
// template files, and the configured backends.
type Source struct {
	// Policy carries its file positions, so errors name the config file.
	Policy    PolicyConfig
	Templates []File
	Backends  map[string]Backend
}

// ReadDir reads every *.yaml and *.yml file directly in dir, sorted by name,
// so loading is deterministic. Names are dir joined with the file name.
func ReadDir(dir string) ([]File, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("templates: read templates dir: %w", err)
	}
	var names []string
	for _, e := range entries {
		n := e.Name()
		if e.IsDir() || strings.HasPrefix(n, ".") {
			continue
		}
		if ext := filepath.Ext(n); ext == ".yaml" || ext == ".yml" {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	files := make([]File, 0, len(names))
	for _, n := range names {
		p := filepath.Join(dir, n)
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("templates: read template: %w", err)
		}
		files = append(files, File{Name: p, Data: data})
	}
	return files, nil
}

// ParsePolicy decodes a YAML document holding only the policy sections
// (operators, agents, freeze_windows, risk_tiers). cmd/latch decodes these
// as part of latch.yaml instead; this is for tests and tools.
func ParsePolicy(file string, data []byte) (PolicyConfig, error) {
	var pc PolicyConfig
	err := strictyaml.Unmarshal(file, data, &pc)
	return pc, err
}

// ParseTemplate strictly decodes one template file without validating it
// against a policy; Load does both.
func ParseTemplate(file string, data []byte) (*TemplateConfig, error) {
	var tc TemplateConfig
	if err := strictyaml.Unmarshal(file, data, &tc); err != nil {
		return &tc, err
	}
	return &tc, nil
}
