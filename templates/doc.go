// Package templates is latch's policy brain: it loads and validates task
// templates and the policy sections of the config (agents, operators, freeze
// windows, risk tiers), and evaluates a request into a Decision (allow, deny
// or approval required) with a rule-by-rule trace.
//
// templates is pure and a leaf: it imports no broker code and does no I/O
// at evaluation time. Everything that can be checked is checked by Load —
// free-form parameters, unanchored patterns, patterns and enum values that
// admit characters a parameter may not hold, unknown backends, windows and
// tiers, CEL conditions (compiled and type-checked), template typos (every
// template is rendered once with sample values) — so that a request can
// only fail on its own merits, and Evaluate is fast enough to sit in the
// request path (see BenchmarkEvaluate).
//
// Parameter values are allowlisted (charset.go): letters, digits and
// . _ : @ -, plus / for a parameter with allow: [slash], never an empty,
// "." or ".." segment, never a control or Unicode format character. Load
// refuses a pattern whose regexp could match anything else, by walking its
// syntax tree; Evaluate refuses such a value with param_constraint.
//
// A backend's own checks of rendered outputs (a vault-lease path's shape,
// vault-pki name syntax) reach Evaluate as Backend.Check, a RenderCheck
// that backends/catalog sets: templates never imports a backend. Evaluate
// runs it after rendering and denies with backend_refused, so what the
// backend would refuse at mint is refused before an approver is asked.
//
// Usage:
//
//	files, err := templates.ReadDir(cfg.TemplatesDir)
//	policy, err := templates.Load(templates.Source{
//		Policy:    cfg.PolicyConfig, // decoded from latch.yaml with strictyaml
//		Templates: files,
//		Backends:  set.Templates(), // backends/catalog: each with its type, path and Check
//	})
//	// err is a strictyaml.Errors: one "file:line:col: message" per problem.
//
//	d := policy.Evaluate(templates.Request{
//		Agent: "spiffe://example.org/agent/report-bot", Task: "nightly-report",
//		Params: map[string]string{"region": "eu"}, Now: time.Now(),
//	})
//	switch d.Outcome {
//	case templates.Allow: // mint d.Rendered (policy, path, names) for d.TTL
//	case templates.ApprovalRequired: // wait for d.Approvals distinct approvers
//	case templates.Deny: // d.Reasons say why; d.NextAllowedAt, when a window blocks
//	}
//
// Freeze windows are evaluated in their own time zone's wall-clock time (see
// Window); the IANA database is embedded.
package templates
