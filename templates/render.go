package templates

import (
	"fmt"
	"strings"
	"text/template"
	"text/template/parse"
)

// Policies, paths, vars and certificate names are text/templates over:
//
//	.params  map of the request's parameters (defaults applied)
//	.vars    map of the template's rendered vars (not available in vars)
//	.agent   map with "id" (the requesting SPIFFE ID) and "owner"
//	.task    the template name
//
// missingkey=error turns a typo (.params.regoin) into an error instead of
// an empty string that would silently widen a path; Load renders every
// template once with sample values, so such typos fail at load.

// renderer is one compiled text/template. Most templates are plain text with
// {{ .params.x }}-style fields; those render by concatenation, skipping
// text/template's reflection, with the same result and the same missing-key
// error.
type renderer struct {
	name  string
	tmpl  *template.Template
	parts []part // fast path; nil when the template needs text/template
}

// part is literal text, or a field: scope ("params", "vars", "agent") and
// key, or scope "task".
type part struct {
	text, scope, key string
}

func compileText(name, text string) (*renderer, error) {
	t, err := template.New(name).Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, cleanTemplateErr(err)
	}
	return &renderer{name: name, tmpl: t, parts: fastParts(t)}, nil
}

func fastParts(t *template.Template) []part {
	if t.Tree == nil || t.Tree.Root == nil || len(t.Templates()) != 1 {
		return nil
	}
	parts := []part{}
	for _, n := range t.Tree.Root.Nodes {
		switch n := n.(type) {
		case *parse.TextNode:
			parts = append(parts, part{text: string(n.Text)})
		case *parse.ActionNode:
			p := n.Pipe
			if p == nil || len(p.Decl) != 0 || len(p.Cmds) != 1 || len(p.Cmds[0].Args) != 1 {
				return nil
			}
			f, ok := p.Cmds[0].Args[0].(*parse.FieldNode)
			if !ok {
				return nil
			}
			switch {
			case len(f.Ident) == 2 && (f.Ident[0] == "params" || f.Ident[0] == "vars" || f.Ident[0] == "agent"):
				parts = append(parts, part{scope: f.Ident[0], key: f.Ident[1]})
			case len(f.Ident) == 1 && f.Ident[0] == "task":
				parts = append(parts, part{scope: "task"})
			default:
				return nil
			}
		default:
			return nil
		}
	}
	return parts
}

// renderData is what templates see.
type renderData struct {
	params, vars, agent map[string]string
	task                string
	hasVars             bool // .vars exists (not while rendering vars)
}

func (d *renderData) asMap() map[string]any {
	m := map[string]any{"params": d.params, "agent": d.agent, "task": d.task}
	if d.hasVars {
		m["vars"] = d.vars
	}
	return m
}

func (r *renderer) render(d *renderData) (string, error) {
	if r.parts != nil {
		var b strings.Builder
		for _, p := range r.parts {
			var m map[string]string
			switch p.scope {
			case "":
				b.WriteString(p.text)
				continue
			case "task":
				b.WriteString(d.task)
				continue
			case "params":
				m = d.params
			case "agent":
				m = d.agent
			case "vars":
				if !d.hasVars {
					return "", fmt.Errorf("%s: .vars is not available here", r.name)
				}
				m = d.vars
			}
			v, ok := m[p.key]
			if !ok {
				return "", fmt.Errorf("%s: .%s has no entry for key %q", r.name, p.scope, p.key)
			}
			b.WriteString(v)
		}
		return b.String(), nil
	}
	var b strings.Builder
	if err := r.tmpl.Execute(&b, d.asMap()); err != nil {
		return "", cleanTemplateErr(err)
	}
	return b.String(), nil
}

// cleanTemplateErr drops text/template's "template: " prefix; the caller's
// message already says which template.
func cleanTemplateErr(err error) error {
	return fmt.Errorf("%s", strings.TrimPrefix(err.Error(), "template: "))
}
