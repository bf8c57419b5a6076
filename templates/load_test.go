package templates

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/latchbroker/latch/templates/strictyaml"
)

func TestLoad_Testdata(t *testing.T) {
	p := loadTestPolicy(t)
	var names []string
	for _, tm := range p.Templates() {
		names = append(names, tm.Name)
		if !strings.HasPrefix(tm.Version, "sha256:") || len(tm.Version) != len("sha256:")+64 {
			t.Errorf("%s: version %q", tm.Name, tm.Version)
		}
	}
	if got := strings.Join(names, ","); got != "close-ticket,deploy,nightly-report,payment,service-cert" {
		t.Fatalf("templates = %s", got)
	}
	if n := len(p.Agents()); n != 3 {
		t.Fatalf("agents = %d", n)
	}
	if n := len(p.Operators()); n != 2 {
		t.Fatalf("operators = %d", n)
	}
	if op, ok := p.Operator("spiffe://example.org/ops/alice"); !ok || !op.Has(RoleApprover) || op.Has(RoleAdmin) {
		t.Fatalf("alice = %+v", op)
	}
	tiers := p.Tiers()
	if tiers[2].Approvals != 1 || tiers[2].MaxTTL != 30*time.Minute || tiers[3].Approvals != 2 || tiers[3].MaxTTL != 15*time.Minute {
		t.Fatalf("tiers = %+v", tiers)
	}
	if tiers[1].Approvals != 0 || !tiers[1].Alert || tiers[0].Alert {
		t.Fatalf("default tiers changed: %+v", tiers)
	}
	a, ok := p.Agent("spiffe://example.org/agent/report-bot")
	if !ok || a.Pattern != "spiffe://example.org/agent/report-*" || !a.IsPrefix() || a.Rate != (Rate{N: 30, Per: time.Minute}) || a.MaxActive != 5 {
		t.Fatalf("report-bot = %+v", a)
	}
	if a, _ := p.Agent("spiffe://example.org/agent/report-special"); a.Owner != "spiffe://example.org/ops/carol" {
		t.Fatalf("exact entry must win over prefix, got %+v", a)
	}
	if _, ok := p.Agent("spiffe://example.org/agent/other"); ok {
		t.Fatal("unregistered agent matched")
	}
	if _, ok := p.Agent("spiffe://other.org/agent/report-bot"); ok {
		t.Fatal("foreign trust domain matched")
	}
	tm, _ := p.Template("service-cert")
	if tm.BackendType != BackendVaultPKI || len(tm.Params) != 2 || !tm.Params[0].HasDefault || tm.Params[0].Name != "region" {
		t.Fatalf("service-cert = %+v", tm)
	}
	if got := strings.Join(p.WindowNames(), ","); got != "billing-close,business-hours,maintenance,night" {
		t.Fatalf("windows = %s", got)
	}
}

// TestLoad_Invalid asserts the exact error for every file in
// testdata/invalid: policy-*.yaml files are policy sections, the others
// templates loaded next to the valid testdata templates.
func TestLoad_Invalid(t *testing.T) {
	tests := []struct {
		file string
		want string
	}{
		{"allow-unknown.yaml", `testdata/invalid/allow-unknown.yaml:4:45: params.v.allow[1]: unknown name "slashes"; allowed: slash`},
		{"alternation-pattern.yaml", `testdata/invalid/alternation-pattern.yaml:4:22: params.ticket.pattern: "^[0-9]+|admin$" must be anchored: start with ^ and end with $ around the whole pattern (group alternatives: ^(a|b)$)`},
		{"bad-effect.yaml", `testdata/invalid/bad-effect.yaml:7:38: windows[0].effect: unknown effect "block"; allowed: deny, require_approval`},
		{"bad-name.yaml", `testdata/invalid/bad-name.yaml:1:7: name: "Close_Ticket" is not a valid template name (lowercase letters, digits and -, at most 64)`},
		{"cel-not-bool.yaml", `testdata/invalid/cel-not-bool.yaml:8:13: escalate[0].when: must be a bool expression, got string`},
		{"cel-syntax.yaml", `testdata/invalid/cel-syntax.yaml:8:11: escalate[0].when: Syntax error: mismatched input '<EOF>' expecting {'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER} (at column 18 of the expression)`},
		{"cel-unknown-param.yaml", `testdata/invalid/cel-unknown-param.yaml:8:13: escalate[0].when: params.regoin is not a parameter of this template`},
		{"cel-unknown-window.yaml", `testdata/invalid/cel-unknown-window.yaml:7:13: escalate[0].when: in_window: unknown freeze window "office-hours"; defined: billing-close, business-hours, maintenance, night (at column 12 of the expression)`},
		{"default-not-allowed.yaml", `testdata/invalid/default-not-allowed.yaml:4:38: params.region.default: "apac" is not one of eu, us`},
		{"default-traversal.yaml", `testdata/invalid/default-traversal.yaml:4:56: params.v.default: "../sys" has the path segment "..", which would climb out of the path it is rendered into`},
		{"duplicate-key.yaml", `testdata/invalid/duplicate-key.yaml:6:1: top level: duplicate key "ttl" (first defined at line 4)`},
		{"duplicate-name.yaml", `testdata/invalid/duplicate-name.yaml:1:7: name: duplicate template "close-ticket" (first defined at testdata/templates/close-ticket.yaml:1:7)`},
		{"empty.yaml", `testdata/invalid/empty.yaml:1:1: empty document: expected a mapping`},
		{"enum-format-char.yaml", `testdata/invalid/enum-format-char.yaml:4:19: params.v.enum[1]: "a\u202eb" contains '\u202e' (U+202E), an invisible Unicode format character; allowed: letters, digits and . _ : @ -; no allow: opt-in admits it`},
		{"enum-slash.yaml", `testdata/invalid/enum-slash.yaml:4:19: params.v.enum[1]: "eu/extra" contains '/' (U+002F); allowed: letters, digits and . _ : @ -; add allow: [slash] to the parameter, or change the value`},
		{"enum-traversal.yaml", `testdata/invalid/enum-traversal.yaml:4:19: params.v.enum[1]: "eu/../sys" has the path segment "..", which would climb out of the path it is rendered into`},
		{"escalate-lowers.yaml", `testdata/invalid/escalate-lowers.yaml:8:42: escalate[0].to: low does not raise risk high; escalation can only raise a tier`},
		{"free-form-param.yaml", `testdata/invalid/free-form-param.yaml:4:3: params.ticket: needs enum or pattern; a free-form parameter would let a request widen its own policy`},
		{"lease-missing-var.yaml", `testdata/invalid/lease-missing-var.yaml:2:10: backend: the path of "app-db" does not render for this template: path:1:23: executing "path" at <.vars.role>: map has no entry for key "role"`},
		{"lease-with-policy.yaml", `testdata/invalid/lease-with-policy.yaml:4:9: policy: only vault-token backends use a policy; backend "app-db" is vault-lease`},
		{"missing-required.yaml", `testdata/invalid/missing-required.yaml:1:1: name is required` +
			"\n" + `testdata/invalid/missing-required.yaml:1:1: backend is required (a name from backends: in the config)` +
			"\n" + `testdata/invalid/missing-required.yaml:1:1: ttl is required (the default lease TTL, such as 10m)` +
			"\n" + `testdata/invalid/missing-required.yaml:1:1: risk is required; allowed: low, medium, high, critical`},
		{"pattern-admits-slash.yaml", `testdata/invalid/pattern-admits-slash.yaml:4:17: params.v.pattern: "^[a-z/]+$" admits '/' (U+002F), which params.v does not allow; narrow it to the characters the value needs, such as [a-z0-9-] (letters, digits and . _ : @ -), or add allow: [slash] to the parameter`},
		{"pattern-admits-space.yaml", `testdata/invalid/pattern-admits-space.yaml:4:17: params.v.pattern: "^[a-z]+\\s[a-z]+$" admits '\t' (U+0009), a control character, which params.v does not allow; narrow it to the characters the value needs, such as [a-z0-9-] (letters, digits and . _ : @ - /); no allow: opt-in admits it`},
		{"pattern-any-plus.yaml", `testdata/invalid/pattern-any-plus.yaml:4:17: params.v.pattern: "^.+$" admits any character (. matches everything but a newline), control and invisible Unicode characters included; narrow it to the characters the value needs, such as [a-z0-9-]`},
		{"pattern-any.yaml", `testdata/invalid/pattern-any.yaml:4:17: params.v.pattern: "^.*$" admits any character (. matches everything but a newline), control and invisible Unicode characters included; narrow it to the characters the value needs, such as [a-z0-9-]`},
		{"pattern-fold-case.yaml", `testdata/invalid/pattern-fold-case.yaml:4:17: params.v.pattern: "(?i)^[a-z]+$" admits 'ſ' (U+017F): case-insensitive matching ((?i)) folds ASCII letters to look-alikes outside letters, digits and . _ : @ -; list both cases instead, such as [A-Za-z]`},
		{"pattern-negated-class.yaml", `testdata/invalid/pattern-negated-class.yaml:4:17: params.v.pattern: "^[^x]+$" admits '\x00' (U+0000), a control character, which params.v does not allow; narrow it to the characters the value needs, such as [a-z0-9-] (letters, digits and . _ : @ -); no allow: opt-in admits it`},
		{"pki-without-common-name.yaml", `testdata/invalid/pki-without-common-name.yaml:3:1: names: common_name is required`},
		{"policy-agent-bare-trust-domain.yaml", `testdata/invalid/policy-agent-bare-trust-domain.yaml:2:9: agents[0].id: a prefix must spell out the trust domain and a path, as in spiffe://example.org/agent/*; got "spiffe://*"`},
		{"policy-agent-star-middle.yaml", `testdata/invalid/policy-agent-star-middle.yaml:2:9: agents[0].id: "*" may only end a prefix, as in spiffe://example.org/agent/report-*; got "spiffe://example.org/agent/*/reports"`},
		{"policy-agent-unknown-template.yaml", `testdata/invalid/policy-agent-unknown-template.yaml:4:17: agents[0].templates[0]: unknown template "nightly-reprot"`},
		{"policy-bad-cron.yaml", `testdata/invalid/policy-bad-cron.yaml:2:26: freeze_windows.billing-close.cron: invalid cron "0 0 28 *": expected exactly 5 fields, found 4: [0 0 28 *] (fields: minute hour day-of-month month day-of-week)`},
		{"policy-bad-owner.yaml", `testdata/invalid/policy-bad-owner.yaml:2:48: agents[0].owner: invalid SPIFFE ID "bob" (or an email): scheme is missing or invalid`},
		{"policy-bad-rate.yaml", `testdata/invalid/policy-bad-rate.yaml:2:113: agents[0].rate: expected N/s, N/m or N/h, such as 30/m, got "30/d"`},
		{"policy-bad-timezone.yaml", `testdata/invalid/policy-bad-timezone.yaml:2:66: freeze_windows.billing-close.timezone: unknown time zone "Europe/Berln"`},
		{"policy-cron-never-fires.yaml", `testdata/invalid/policy-cron-never-fires.yaml:2:17: freeze_windows.leap.cron: "0 0 30 2 *" never fires`},
		{"policy-duplicate-agent.yaml", `testdata/invalid/policy-duplicate-agent.yaml:3:11: agents[1].id: duplicate agent "spiffe://example.org/agent/a" (first at line 2)`},
		{"policy-tier-fewer-approvals.yaml", `testdata/invalid/policy-tier-fewer-approvals.yaml:2:26: risk_tiers.critical.approvals: 0 is fewer than high's 1; a higher tier may not need fewer approvals`},
		{"policy-operator-bad-email.yaml", `testdata/invalid/policy-operator-bad-email.yaml:2:5: operators[0].email: "alice at example.org" is not an email address`},
		{"policy-operator-two-names.yaml", `testdata/invalid/policy-operator-two-names.yaml:2:5: operators[0]: name exactly one of id (a SPIFFE ID), subject, email or group (a person signed in through oidc:)`},
		{"policy-unknown-role.yaml", `testdata/invalid/policy-unknown-role.yaml:2:51: operators[0].roles[0]: unknown role "approve"; allowed: viewer, approver, revoker, admin`},
		{"policy-unknown-section.yaml", `testdata/invalid/policy-unknown-section.yaml:1:1: unknown key "agent"; allowed: operators, agents, freeze_windows, risk_tiers`},
		{"policy-unknown-tier.yaml", `testdata/invalid/policy-unknown-tier.yaml:2:3: risk_tiers.urgent: unknown tier "urgent"; allowed: low, medium, high, critical`},
		{"policy-window-bad-until.yaml", `testdata/invalid/policy-window-bad-until.yaml:2:57: freeze_windows.year-end.until: expected an RFC 3339 time with offset, such as 2026-12-24T00:00:00+01:00, got "2026-12-20"`},
		{"policy-window-incomplete.yaml", `testdata/invalid/policy-window-incomplete.yaml:2:3: freeze_windows.business-hours: duration is required with cron (how long each occurrence lasts, such as 9h)`},
		{"render-missing-param.yaml", `testdata/invalid/render-missing-param.yaml:5:9: policy:1:36: executing "policy" at <.params.tickte>: map has no entry for key "tickte"`},
		{"syntax-error.yaml", `testdata/invalid/syntax-error.yaml:2:10: invalid YAML: could not find end character of double-quoted text`},
		{"token-without-policy.yaml", `testdata/invalid/token-without-policy.yaml:2:10: backend: "tokens" is a vault-token backend, which needs a policy: to render`},
		{"ttl-exceeds-max.yaml", `testdata/invalid/ttl-exceeds-max.yaml:4:6: ttl: 1h exceeds max_ttl 30m`},
		{"unanchored-pattern.yaml", `testdata/invalid/unanchored-pattern.yaml:4:22: params.ticket.pattern: "[0-9]+" must be anchored: start with ^ and end with $ around the whole pattern (group alternatives: ^(a|b)$)`},
		{"unknown-backend.yaml", `testdata/invalid/unknown-backend.yaml:2:10: backend: unknown backend "postgres"; configured: app-db, certs, tokens`},
		{"unknown-key.yaml", `testdata/invalid/unknown-key.yaml:6:1: unknown key "max_tll"; allowed: name, description, backend, params, vars, policy, names, ttl, max_ttl, risk, escalate, windows, max_active`},
		{"unknown-tier.yaml", `testdata/invalid/unknown-tier.yaml:5:7: risk: unknown tier "urgent"; allowed: low, medium, high, critical`},
		{"unknown-window.yaml", `testdata/invalid/unknown-window.yaml:8:16: windows[1].outside: unknown freeze window "office-hours"; defined: billing-close, business-hours, maintenance, night`},
		{"unsafe-enum.yaml", `testdata/invalid/unsafe-enum.yaml:4:27: params.path.enum[1]: "*" contains '*' (U+002A); allowed: letters, digits and . _ : @ -; no allow: opt-in admits it`},
		{"window-and-outside.yaml", `testdata/invalid/window-and-outside.yaml:7:5: windows[0]: set window or outside, not both`},
		{"wrong-type.yaml", `testdata/invalid/wrong-type.yaml:4:6: ttl: expected a duration such as 10m or 1h30m, got 10`},
	}
	covered := map[string]bool{}
	for _, tt := range tests {
		covered[tt.file] = true
		t.Run(tt.file, func(t *testing.T) {
			err := loadInvalid(t, tt.file)
			if err == nil {
				t.Fatal("loaded without error")
			}
			var errs strictyaml.Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error is %T, want strictyaml.Errors: %v", err, err)
			}
			if err.Error() != tt.want {
				t.Fatalf("got\n%s\nwant\n%s", err, tt.want)
			}
		})
	}
	ents, err := os.ReadDir("testdata/invalid")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if !covered[e.Name()] {
			t.Errorf("testdata/invalid/%s has no test case", e.Name())
		}
	}
}

func loadOne(t *testing.T, src string) (*Policy, error) {
	t.Helper()
	return Load(Source{Policy: readTestPolicy(t),
		Templates: append(readTestTemplates(t), File{Name: "t.yaml", Data: []byte(src)}), Backends: testBackends})
}

func TestTemplate_VersionIsCanonical(t *testing.T) {
	block := `# a comment
name: t
backend: app-db
params:
  region:
    enum: [eu, us]
vars:
  role: "report-{{ .params.region }}"
ttl: 10m
risk: low
`
	flow := `{risk: low, ttl: 600s, vars: {role: 'report-{{ .params.region }}'}, params: {region: {enum: ["eu", "us"]}}, backend: app-db, name: t}`
	explicitMax := block + "max_ttl: 10m\n"
	changed := strings.Replace(block, "ttl: 10m", "ttl: 11m", 1)
	version := func(src string) string {
		p, err := loadOne(t, src)
		if err != nil {
			t.Fatal(err)
		}
		tm, _ := p.Template("t")
		return tm.Version
	}
	v := version(block)
	if got := version(flow); got != v {
		t.Errorf("flow style changed the version: %s vs %s", got, v)
	}
	if got := version(explicitMax); got != v {
		t.Errorf("an explicit max_ttl equal to the default changed the version")
	}
	if got := version(changed); got == v {
		t.Errorf("a different ttl kept the version")
	}
	// Stable across processes and releases: pinned.
	if want := "sha256:"; !strings.HasPrefix(v, want) {
		t.Fatalf("version = %s", v)
	}
}

func TestLoad_ReportsEveryError(t *testing.T) {
	pc := readTestPolicy(t)
	files := append(readTestTemplates(t),
		File{Name: "a.yaml", Data: []byte("name: a\nbackend: tokens\npolicy: x\nttl: 5m\nrisk: extreme\n")},
		File{Name: "b.yaml", Data: []byte("name: b\nbackend: nope\npolicy: x\nttl: 5m\nrisk: low\n")},
	)
	_, err := Load(Source{Policy: pc, Templates: files, Backends: testBackends})
	var errs strictyaml.Errors
	if !errors.As(err, &errs) || len(errs) != 2 {
		t.Fatalf("want both files' errors, got %v", err)
	}
	if errs[0].Pos.File != "a.yaml" || errs[1].Pos.File != "b.yaml" {
		t.Fatalf("errors not sorted by file: %v", err)
	}
}

func TestParseAgentPattern(t *testing.T) {
	tests := []struct {
		id, prefix, err string
	}{
		{"spiffe://example.org/agent/report-bot", "", ""},
		{"spiffe://example.org/agent/report-*", "spiffe://example.org/agent/report-", ""},
		{"spiffe://example.org/agent/*", "spiffe://example.org/agent/", ""},
		{"spiffe://example.org/*", "spiffe://example.org/", ""},
		{"spiffe://example.org/agent/*/x", "", `"*" may only end a prefix`},
		{"spiffe://*", "", "a prefix must spell out the trust domain"},
		{"spiffe://exa*", "", "a prefix must spell out the trust domain"},
		{"*", "", "a prefix must spell out the trust domain"},
		{"spiffe://Example.org/agent/*", "", "invalid SPIFFE ID prefix"},
		{"spiffe://example.org/agent/../*", "", "invalid SPIFFE ID prefix"},
		{"spiffe://example.org/agent/", "", "invalid SPIFFE ID"},
		{"https://example.org/agent", "", "invalid SPIFFE ID"},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			prefix, err := parseAgentPattern(tt.id)
			switch {
			case tt.err == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
				t.Fatalf("err = %v, want %q", err, tt.err)
			case prefix != tt.prefix:
				t.Fatalf("prefix = %q, want %q", prefix, tt.prefix)
			}
		})
	}
}

func TestCompileAnchored(t *testing.T) {
	for _, ok := range []string{`^[0-9]{1,9}$`, `^(eu|us)$`, `^ord_[a-z]+$`, `^a$`} {
		if _, err := compileAnchored(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{`[0-9]+`, `^[0-9]+`, `[0-9]+$`, `^a|b$`, `(?m)^a$`, `^a$|^b$`, `^(`, ``} {
		if _, err := compileAnchored(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestCheckValue: values hold only the parameter's characters, the
// default ones or those allow: adds, and never a path segment that is
// empty, "." or "..". Every hostile string of issue 13 is here.
func TestCheckValue(t *testing.T) {
	slash, _ := compileAllow([]string{"slash"})
	tests := []struct {
		name  string
		v     string
		chars charSet
		want  string // substring of the refusal; "" = valid
	}{
		{"Name", "eu", charSet{}, ""},
		{"Number", "123", charSet{}, ""},
		{"Punctuation", "ord_abc.v1:x@y-z", charSet{}, ""},
		{"Dots inside", "a..b", charSet{}, ""},
		{"Path", "team/app/db", slash, ""},
		{"ErrEmpty", "", charSet{}, "is empty"},
		{"ErrTooLong", strings.Repeat("a", maxValueLen+1), charSet{}, "longer than 256 bytes"},
		{"ErrSlash", "eu/extra/segments", charSet{}, `'/' (U+002F); allowed: letters, digits and . _ : @ -`},
		{"ErrTraversal", "../../sys/policy/x", charSet{}, `'/' (U+002F)`},
		{"ErrTraversal/with slash", "../../sys/policy/x", slash, `the path segment ".."`},
		{"ErrTraversal/inside", "eu/../x", slash, `the path segment ".."`},
		{"ErrDot", "eu/./x", slash, `the path segment "."`},
		{"ErrDotDot/alone", "..", charSet{}, `the path segment ".."`},
		{"ErrDot/alone", ".", charSet{}, `the path segment "."`},
		{"ErrLeadingSlash", "/sys", slash, "empty path segment"},
		{"ErrTrailingSlash", "a/", slash, "empty path segment"},
		{"ErrDoubleSlash", "a//b", slash, "empty path segment"},
		{"ErrPercentEncoded", "%2e%2e", slash, `'%' (U+0025)`},
		{"ErrRLO", "a\u202Eb", slash, `'\u202e' (U+202E), an invisible Unicode format character`},
		{"ErrZeroWidthJoiner", "a\u200Db", charSet{}, "(U+200D), an invisible Unicode format character"},
		{"ErrNUL", "a\x00", slash, "(U+0000), a control character"},
		{"ErrNewline", "12\n", charSet{}, "(U+000A), a control character"},
		{"ErrDEL", "a\x7f", charSet{}, "(U+007F), a control character"},
		{"ErrC1", "a\u0085", charSet{}, "(U+0085), a control character"},
		{"ErrComma", "a,b", charSet{}, `',' (U+002C)`},
		{"ErrSpace", "a b", charSet{}, `' ' (U+0020)`},
		{"ErrQuote", `a"b`, charSet{}, `'"' (U+0022)`},
		{"ErrBackslash", `a\b`, charSet{}, `'\\' (U+005C)`},
		{"ErrWildcard", "a*", slash, `'*' (U+002A)`},
		{"ErrPlus", "a+b", charSet{}, `'+' (U+002B)`},
		{"ErrTemplating", "{{x}}", charSet{}, `'{' (U+007B)`},
		{"ErrInterpolation", "${x}", charSet{}, `'$' (U+0024)`},
		{"ErrNonASCII", "ü", charSet{}, `'ü' (U+00FC)`},
		{"ErrCyrillicLookalike", "\u0430dmin", charSet{}, "(U+0430)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := checkValue(tt.v, tt.chars)
			switch {
			case tt.want == "" && got != "":
				t.Fatalf("%q refused: %s", tt.v, got)
			case tt.want != "" && !strings.Contains(got, tt.want):
				t.Fatalf("checkValue(%q) = %q, want it to contain %q", tt.v, got, tt.want)
			}
		})
	}
}

// TestCompileAllow: allow: names are a closed list, and none of them, nor
// the default set, admits a control or format character.
func TestCompileAllow(t *testing.T) {
	if cs, bad := compileAllow([]string{"slash"}); len(bad) != 0 || !cs.has('/') {
		t.Fatalf("slash: %+v %v", cs, bad)
	}
	if _, bad := compileAllow([]string{"slash", "slashes", "slash"}); bad[1] != `unknown name "slashes"; allowed: slash` || bad[2] != `"slash" is listed twice` || bad[0] != "" {
		t.Fatalf("bad = %v", bad)
	}
	all := charSet{}
	for _, r := range allowNames {
		all.extra += string(r)
	}
	for r := rune(0); r <= unicode.MaxRune; r++ {
		if all.has(r) && (neverAllowed(r) || r > unicode.MaxASCII || unicode.IsSpace(r)) {
			t.Fatalf("%U is allowed", r)
		}
	}
}

func TestLoad_BackendPathErrors(t *testing.T) {
	backends := map[string]Backend{"db": {Type: BackendVaultLease, Path: "database/creds/{{ .vars.role", PathAt: strictyaml.Pos{File: "latch.yaml", Line: 9, Col: 40}}}
	_, err := Load(Source{Templates: []File{{Name: "t.yaml", Data: []byte("name: t\nbackend: db\nvars: {role: r}\nttl: 5m\nrisk: low\n")}}, Backends: backends})
	want := `latch.yaml:9:40: path: path:1: unclosed action`
	if err == nil || err.Error() != want {
		t.Fatalf("got %v, want %s", err, want)
	}
}

// A person holds the roles of every entry that names their subject, their
// verified email or one of their groups, and nothing through an entry
// that names someone else; a person's entry key is never a caller's ID.
func TestPolicy_Person(t *testing.T) {
	src := `operators:
  - { id: spiffe://example.org/ops/alice, roles: [viewer] }
  - { subject: carol-id, roles: [approver] }
  - { email: Carol@Example.org, roles: [revoker] }
  - { group: sec-admins, roles: [admin] }
  - { group: viewers, roles: [viewer] }
`
	p := loadPolicyYAML(t, src)
	tests := []struct {
		name, subject, email string
		groups               []string
		want                 []Role
		found                bool
	}{
		{"subject and email", "carol-id", "carol@example.org", nil, []Role{RoleApprover, RoleRevoker}, true},
		{"group", "dave-id", "", []string{"viewers", "sec-admins"}, []Role{RoleAdmin, RoleViewer}, true},
		{"unverified email counts for nothing", "x", "", nil, nil, false},
		{"someone else", "bob-id", "bob@example.org", []string{"eng"}, nil, false},
	}
	for _, tt := range tests {
		op, found := p.Person("actor", tt.subject, tt.email, tt.groups)
		slices.Sort(op.Roles)
		slices.Sort(tt.want)
		if found != tt.found || !slices.Equal(op.Roles, tt.want) || op.ID != "actor" {
			t.Errorf("%s: %+v %v, want roles %v %v", tt.name, op, found, tt.want, tt.found)
		}
	}
	if _, ok := p.Operator("group:sec-admins"); ok {
		t.Error("a group entry answered as an operator ID")
	}
}
