// Package strictyaml decodes YAML configuration into Go structs strictly:
// unknown keys, duplicate keys, wrong types, anchors, aliases and tags are
// errors, and every error names file:line:col, the key path and what is
// allowed. latch's config and task templates are security policy; a typo that
// a lenient decoder silently ignores ("max_tll: 5m") would widen what an
// agent may do, so nothing is ignored.
//
// It lives next to templates because the policy loader is its first user;
// cmd/latch uses it for the rest of latch.yaml and backends use Raw to decode
// their own config blocks with the same error format.
//
// Usage:
//
//	type Store struct {
//		Path    string        `yaml:"path"`
//		Timeout time.Duration `yaml:"timeout"`
//		At      strictyaml.Pos `yaml:",pos"`         // where this block starts
//		PathAt  strictyaml.Pos `yaml:"path,pos"`     // where path's value starts
//		Rest    strictyaml.Raw `yaml:",remain"`      // other keys, decoded later
//	}
//	err := strictyaml.Unmarshal("latch.yaml", data, &cfg)
//	// err is a strictyaml.Errors; each line reads "latch.yaml:3:5: message".
//
// Supported field types: string, bool, integers, floats, time.Duration
// (Go syntax: "10m", "1h30m"), pointers, slices, map[string]T, structs,
// embedded structs tagged `yaml:",inline"`, and Raw. Null values leave the
// field at its zero value.
package strictyaml
