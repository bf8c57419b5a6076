package catalog_test

import (
	"strings"
	"testing"
	"time"

	"github.com/latchbroker/latch/backends/catalog"
	"github.com/latchbroker/latch/templates"
)

// hostilePolicy grants one agent templates over each real backend type, all
// at risk high: a request that got past Evaluate would go to an approver.
const hostilePolicy = `
agents:
  - id: spiffe://example.org/agent/mallory
    owner: spiffe://example.org/ops/bob
    templates: [kv-read, db-read, db-plain, cert, cert-comma]
`

var hostileTemplates = map[string]string{
	// A KV subtree: slashes are allowed, climbing out is not.
	"kv-read": `name: kv-read
backend: tokens
params:
  app: { pattern: "^[a-z0-9.-]+(/[a-z0-9.-]+){0,3}$", allow: [slash] }
policy: 'path "secret/data/apps/{{ .params.app }}" { capabilities = ["read"] }'
ttl: 5m
risk: high
`,
	// A one-segment vault-lease path whose parameter (carelessly) allows
	// slashes: only the backend's shape check stands in the way.
	"db-read": `name: db-read
backend: app-db
params:
  role: { pattern: "^[a-z]+(/[a-z]+)*$", allow: [slash] }
vars: { role: "{{ .params.role }}" }
ttl: 5m
risk: high
`,
	"db-plain": `name: db-plain
backend: app-db
params:
  role: { pattern: "^[a-z-]+$" }
vars: { role: "report-{{ .params.role }}" }
ttl: 5m
risk: high
`,
	"cert": `name: cert
backend: certs
params:
  host: { pattern: "^[a-z0-9-]{1,63}$" }
names:
  common_name: "{{ .params.host }}.svc.example.org"
  alt_names: ["{{ .params.host }}.example.org"]
  uri_sans: ["spiffe://example.org/service/{{ .params.host }}"]
ttl: 5m
risk: high
`,
	// A template bug: its own text puts a comma into the common name.
	"cert-comma": `name: cert-comma
backend: certs
params:
  host: { pattern: "^[a-z0-9-]{1,63}$" }
names:
  common_name: "{{ .params.host }}.svc.example.org,evil.example.com"
ttl: 5m
risk: high
`,
}

func loadHostile(t *testing.T) *templates.Policy {
	t.Helper()
	set, err := catalog.Parse("latch.yaml", []byte(threeYAML))
	if err != nil {
		t.Fatal(err)
	}
	pc, err := templates.ParsePolicy("policy.yaml", []byte(hostilePolicy))
	if err != nil {
		t.Fatal(err)
	}
	src := templates.Source{Policy: pc, Backends: set.Templates()}
	for name, body := range hostileTemplates {
		src.Templates = append(src.Templates, templates.File{Name: name + ".yaml", Data: []byte(body)})
	}
	p, err := templates.Load(src)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestEvaluate_HostileValues: each hostile value of issue 13 is denied by
// Evaluate, with the reason that names the rule it broke, so it never
// reaches an approver or a backend. Good values next to them still go to
// approval, which shows the denials come from the values.
func TestEvaluate_HostileValues(t *testing.T) {
	p := loadHostile(t)
	tests := []struct {
		name, task, param, value string
		want                     templates.ReasonCode // "" = goes to approval
		msg                      string               // substring of the reason's message
	}{
		{"KVSubtree", "kv-read", "app", "billing/db", "", ""},
		{"ErrTraversal", "kv-read", "app", "../../sys/policy/x", templates.ReasonParamConstraint, `the path segment ".."`},
		{"ErrTraversalInside", "kv-read", "app", "eu/../x", templates.ReasonParamConstraint, `the path segment ".."`},
		{"ErrPercentEncodedDots", "kv-read", "app", "%2e%2e", templates.ReasonParamConstraint, `'%' (U+0025)`},
		{"ErrLeadingSlash", "kv-read", "app", "/sys", templates.ReasonParamConstraint, "empty path segment"},
		{"ErrRLO", "kv-read", "app", "a\u202Eb", templates.ReasonParamConstraint, "(U+202E), an invisible Unicode format character"},
		{"ErrNUL", "kv-read", "app", "a\x00b", templates.ReasonParamConstraint, "(U+0000), a control character"},
		{"ErrNewline", "kv-read", "app", "a\nb", templates.ReasonParamConstraint, "(U+000A), a control character"},
		{"ErrEscape", "kv-read", "app", "a\x1b[31m", templates.ReasonParamConstraint, "(U+001B), a control character"},
		{"ErrC1Control", "kv-read", "app", "a\u0085", templates.ReasonParamConstraint, "(U+0085), a control character"},
		{"LeaseOneSegment", "db-read", "role", "eu", "", ""},
		{"ErrLeaseExtraSegments", "db-read", "role", "eu/extra/segments", templates.ReasonBackendRefused,
			`backend app-db (vault-lease) would refuse this request: path "database/creds/eu/extra/segments" has 5 segments where the backend's path template has 3`},
		{"ErrLeaseExtraSegments/no opt-in", "db-plain", "role", "eu/extra/segments", templates.ReasonParamConstraint, `'/' (U+002F)`},
		{"ErrLeaseTraversal", "db-plain", "role", "../../sys/policy/x", templates.ReasonParamConstraint, `'/' (U+002F)`},
		{"Cert", "cert", "host", "search", "", ""},
		{"ErrCommaInName", "cert", "host", "a,b", templates.ReasonParamConstraint, `',' (U+002C)`},
		{"ErrRLOInName", "cert", "host", "a\u202Eb", templates.ReasonParamConstraint, "(U+202E)"},
		{"ErrCommaFromTemplate", "cert-comma", "host", "a", templates.ReasonBackendRefused,
			`backend certs (vault-pki) would refuse this request: common_name "a.svc.example.org,evil.example.com" contains a comma`},
	}
	now := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := p.Evaluate(templates.Request{Agent: "spiffe://example.org/agent/mallory", Task: tt.task,
				Params: map[string]string{tt.param: tt.value}, Now: now})
			if tt.want == "" {
				if d.Outcome != templates.ApprovalRequired {
					t.Fatalf("outcome %s, want approval_required: %+v", d.Outcome, d.Reasons)
				}
				return
			}
			if d.Outcome != templates.Deny || len(d.Reasons) != 1 || d.Reasons[0].Code != tt.want {
				t.Fatalf("outcome %s reasons %+v, want deny with %s only", d.Outcome, d.Reasons, tt.want)
			}
			if !strings.Contains(d.Reasons[0].Message, tt.msg) {
				t.Fatalf("message %q, want it to contain %q", d.Reasons[0].Message, tt.msg)
			}
		})
	}
}
