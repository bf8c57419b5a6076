package vaultlease

import (
	"fmt"
	"strings"
	"text/template"
	"text/template/parse"
	"unicode"

	"github.com/latchbroker/latch/backends/vault"
	"github.com/latchbroker/latch/templates"
)

// RenderCheck is the shape every path a template renders for one
// vault-lease backend must have. templates.Evaluate runs it (wired in by
// backends/catalog), so a request whose path the backend would refuse is
// denied before an approver sees it; Mint runs it again.
//
// A value renders inside its segment: the path has exactly as many
// segments as its template, so database/creds/{{ .vars.role }} with a
// role of eu/extra/segments, which would read another endpoint, is
// refused even though it stays under database/creds/.
type RenderCheck struct {
	// Prefix is the template's static part, up to the last slash before
	// its first action (Config.Prefix).
	Prefix string
	// Fixed is true for a template without actions: the path is Prefix.
	Fixed bool
	// Segments is how many /-separated segments the template renders:
	// the slashes in its text, outside actions, plus one. Zero when the
	// template does not parse, which refuses every path.
	Segments int
}

var _ templates.RenderCheck = RenderCheck{}

// RenderCheck returns the backend's check of rendered paths.
func (c Config) RenderCheck() RenderCheck {
	n, _ := templateSegments(c.Path)
	return RenderCheck{Prefix: c.Prefix(), Fixed: !strings.Contains(c.Path, "{{"), Segments: n}
}

// CheckRendered checks r.Path; see Check.
func (rc RenderCheck) CheckRendered(r templates.Rendered) error { return rc.Check(r.Path) }

// Check checks one rendered path: a clean Vault path (no empty, "." or
// ".." segment, no ? # % \ or control character, no whitespace or
// invisible format character), under Prefix, with Segments segments.
func (rc RenderCheck) Check(p string) error {
	if _, err := vault.CleanPath(p); err != nil {
		return fmt.Errorf("path %q is not a clean Vault path (no empty, . or .. segment, no ? # %% \\ or control character)", p)
	}
	if i := strings.IndexFunc(p, unsafePathRune); i >= 0 {
		return fmt.Errorf("path %q contains %U, which a Vault path of latch never holds", p, []rune(p[i:])[0])
	}
	switch {
	case rc.Fixed && p != rc.Prefix:
		return fmt.Errorf("path %q is not the backend's fixed path %s", p, rc.Prefix)
	case !rc.Fixed && (!strings.HasPrefix(p, rc.Prefix) || p == rc.Prefix):
		return fmt.Errorf("path %q is outside %s", p, rc.Prefix)
	}
	if n := strings.Count(p, "/") + 1; n != rc.Segments {
		return fmt.Errorf("path %q has %d segments where the backend's path template has %d: a parameter or var must not add or remove a path segment", p, n, rc.Segments)
	}
	return nil
}

// unsafePathRune is true for whitespace and Unicode format characters:
// legal in a Vault path, but never in one latch renders, and invisible
// or misleading to an approver.
func unsafePathRune(r rune) bool {
	return unicode.IsSpace(r) || unicode.Is(unicode.Cf, r)
}

// templateSegments counts the segments a path template renders, given
// that no action renders a slash. Control structures ({{ if }}, {{ range }},
// {{ with }}, {{ template }}) would make the count depend on the request,
// so they are an error: compute a var in the template instead. A template
// that does not parse counts 0 segments and is no error here:
// templates.Load reports it, with its position in the config.
func templateSegments(path string) (int, error) {
	t, err := template.New("path").Parse(path)
	if err != nil || t.Tree == nil {
		return 0, nil
	}
	n := 1
	for _, node := range t.Tree.Root.Nodes {
		switch node := node.(type) {
		case *parse.TextNode:
			n += strings.Count(string(node.Text), "/")
		case *parse.ActionNode:
		default:
			return 0, fmt.Errorf("path %q may use only {{ ... }} actions, not %s; compute a var in the template instead", path, node)
		}
	}
	return n, nil
}
