package catalog

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/latchbroker/latch/backends/vault"
	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/templates"
	"github.com/latchbroker/latch/templates/strictyaml"
)

// Block is one entry of backends: as written. Type picks the backend type;
// every other key belongs to that type, which decodes it with Decode.
type Block struct {
	Type    string         `yaml:"type"`
	Options strictyaml.Raw `yaml:",remain"`

	At     strictyaml.Pos `yaml:",pos"`
	TypeAt strictyaml.Pos `yaml:"type,pos"`
}

// Decode strictly decodes the backend's own keys (all but type) into v;
// errors name file:line:col like the rest of the config.
func (b Block) Decode(v any) error { return b.Options.Decode(v) }

// Type is one backend type latch can plug in.
type Type struct {
	// Name is the value of type: in the config, such as vault-token.
	Name string
	// Decode decodes and validates one block of this type. path is the
	// block's key path (backends.<name>), which messages start with;
	// errors are *strictyaml.Error or strictyaml.Errors.
	Decode func(path string, b Block) (Spec, error)
}

// Spec is one backend as configured, decoded and validated by its type:
// what templates needs to check the templates that use it, and how to
// build it.
type Spec struct {
	// Template is the backend as templates.Load sees it, with the
	// backend's RenderCheck as its Check.
	Template templates.Backend

	build func(*vault.Client) (broker.Backend, error)
}

// Build builds the backend over c, latch's Vault client.
func (s Spec) Build(c *vault.Client) (broker.Backend, error) {
	if s.build == nil {
		return nil, fmt.Errorf("catalog: %s backend was not decoded", s.Template.Type)
	}
	return s.build(c)
}

// Set is the configured backends by name.
type Set map[string]Spec

// Templates is the set as templates.Source.Backends wants it.
func (s Set) Templates() map[string]templates.Backend {
	out := make(map[string]templates.Backend, len(s))
	for name, spec := range s {
		out[name] = spec.Template
	}
	return out
}

// Build builds every backend of the set over c, for broker.Config.Backends.
func (s Set) Build(c *vault.Client) (map[string]broker.Backend, error) {
	out := make(map[string]broker.Backend, len(s))
	for _, name := range sortedKeys(s) {
		b, err := s[name].Build(c)
		if err != nil {
			return nil, fmt.Errorf("backend %s: %w", name, err)
		}
		out[name] = b
	}
	return out, nil
}

// nameRE is what a backend name may be: lowercase letters, digits and -.
var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$`)

// Decode checks every block's name and type and has its type decode it.
// The error, if any, is a strictyaml.Errors with one line per problem.
// Even then the set holds every block of a known type (with only its type
// when its keys were bad), so that the templates using it can still be
// checked without a spurious "unknown backend".
func Decode(section map[string]Block) (Set, error) {
	types := map[string]Type{}
	var names []string
	for _, t := range BuiltIns() {
		types[t.Name] = t
		names = append(names, t.Name)
	}
	slices.Sort(names)
	allowed := strings.Join(names, ", ")

	set := Set{}
	var errs strictyaml.Errors
	for _, name := range sortedKeys(section) {
		b := section[name]
		path := "backends." + name
		if !nameRE.MatchString(name) {
			errs = append(errs, b.At.Errorf("%s: backend names are lowercase letters, digits and -", path))
			continue
		}
		t, ok := types[b.Type]
		switch {
		case b.Type == "":
			errs = append(errs, b.At.Errorf("%s: type is required; allowed: %s", path, allowed))
			continue
		case !ok:
			errs = append(errs, b.TypeAt.Errorf("%s.type: unknown backend type %q; allowed: %s", path, b.Type, allowed))
			continue
		}
		spec, err := t.Decode(path, b)
		errs.Add(err)
		spec.Template.Type = t.Name
		set[name] = spec
	}
	return set, errs.Err()
}

// Parse decodes a YAML document whose only key is backends:, as in
// latch.yaml, and then the section as Decode does. file names the
// document in errors.
func Parse(file string, data []byte) (Set, error) {
	var doc struct {
		Backends map[string]Block `yaml:"backends"`
	}
	var errs strictyaml.Errors
	if err := strictyaml.Unmarshal(file, data, &doc); err != nil {
		errs.Add(err)
		if errs.Syntax() {
			return nil, errs.Err()
		}
	}
	set, err := Decode(doc.Backends)
	errs.Add(err)
	return set, errs.Err()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
