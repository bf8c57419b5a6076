package console

import (
	"html/template"
	"maps"
	"time"

	"github.com/latchbroker/latch/broker/api"
)

// funcs are the pages' template functions.
var funcs = template.FuncMap{
	// with_title gives the layout its data: the page's, plus its title.
	"with_title": func(data any, title string) map[string]any {
		out := map[string]any{}
		if m, ok := data.(map[string]any); ok {
			maps.Copy(out, m)
		}
		out["Title"] = title
		return out
	},
	"rfc3339": func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"clock":   func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05 UTC") },
	"states":  func() []string { return api.LeaseStates },
}
