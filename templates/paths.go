package templates

import (
	"maps"
	"slices"
)

// Paths renders the template's backend path (vault-lease) for every
// combination of its parameters' enum values, at most limit of them, for
// latch doctor to check in Vault. ok is false when the paths cannot be
// listed: a parameter with a pattern, a path that reads the agent's
// identity, or more than limit combinations.
func (t *Template) Paths(limit int) (paths []string, ok bool) {
	if t.path == nil {
		return nil, true
	}
	combos := []map[string]string{{}}
	for _, p := range t.Params {
		if len(p.Enum) == 0 || len(combos)*len(p.Enum) > limit {
			return nil, false
		}
		var next []map[string]string
		for _, c := range combos {
			for _, v := range p.Enum {
				m := maps.Clone(c)
				m[p.Name] = v
				next = append(next, m)
			}
		}
		combos = next
	}
	for _, params := range combos {
		var d Decision
		if err := t.render(&d, params, map[string]string{}); err != nil {
			return nil, false
		}
		paths = append(paths, d.Rendered.Path)
	}
	slices.Sort(paths)
	return slices.Compact(paths), true
}
