package strictyaml

import (
	"errors"
	"strings"
	"testing"
	"time"
)

type inner struct {
	Enum    []string `yaml:"enum"`
	Pattern string   `yaml:"pattern"`
	At      Pos      `yaml:",pos"`
	EnumAt  []Pos    `yaml:"enum,pos"`
}

type common struct {
	Owner string `yaml:"owner"`
}

type doc struct {
	Name     string           `yaml:"name"`
	TTL      time.Duration    `yaml:"ttl"`
	Count    int              `yaml:"count"`
	On       bool             `yaml:"on"`
	Ratio    float64          `yaml:"ratio"`
	Params   map[string]inner `yaml:"params"`
	Tags     []string         `yaml:"tags"`
	Ptr      *inner           `yaml:"ptr"`
	Body     Raw              `yaml:"body"`
	TTLAt    Pos              `yaml:"ttl,pos"`
	VarsAt   map[string]Pos   `yaml:"vars,pos"`
	Vars     map[string]string
	VarsReal map[string]string `yaml:"vars"`
	common   `yaml:",inline"`
}

type backend struct {
	Type string `yaml:"type"`
	Rest Raw    `yaml:",remain"`
}

func TestUnmarshal_OK(t *testing.T) {
	src := `# comment
name: x
ttl: 10m
count: 3
on: true
ratio: 0.5
owner: bob
params:
  region: { enum: [eu, us] }
  id:
    pattern: "^[0-9]+$"
tags: [a, 1, true]
ptr: { pattern: "^a$" }
body: |
  line 1
  line 2
vars:
  role: "r-{{ .params.region }}"
`
	var d doc
	if err := Unmarshal("f.yaml", []byte(src), &d); err != nil {
		t.Fatal(err)
	}
	if d.Name != "x" || d.TTL != 10*time.Minute || d.Count != 3 || !d.On || d.Ratio != 0.5 || d.Owner != "bob" {
		t.Fatalf("scalars: %+v", d)
	}
	if got := d.Params["region"]; strings.Join(got.Enum, ",") != "eu,us" || got.At != (Pos{"f.yaml", 9, 3}) || got.EnumAt[1] != (Pos{"f.yaml", 9, 24}) {
		t.Fatalf("params: %+v", got)
	}
	if d.Params["id"].Pattern != "^[0-9]+$" {
		t.Fatalf("pattern: %+v", d.Params["id"])
	}
	if strings.Join(d.Tags, ",") != "a,1,true" {
		t.Fatalf("tags: %v", d.Tags)
	}
	if d.Ptr == nil || d.Ptr.Pattern != "^a$" {
		t.Fatalf("ptr: %+v", d.Ptr)
	}
	if d.TTLAt != (Pos{"f.yaml", 3, 6}) {
		t.Fatalf("ttl pos: %v", d.TTLAt)
	}
	if d.VarsAt["role"] != (Pos{"f.yaml", 18, 9}) || d.VarsReal["role"] != "r-{{ .params.region }}" {
		t.Fatalf("vars: %v %v", d.VarsAt, d.VarsReal)
	}
	var s string
	if err := d.Body.Decode(&s); err != nil || s != "line 1\nline 2\n" {
		t.Fatalf("raw: %q %v", s, err)
	}
}

func TestUnmarshal_Errors(t *testing.T) {
	tests := []struct {
		name, src, want string
	}{
		{"unknown key", "name: x\nnmae: y\n", `f.yaml:2:1: unknown key "nmae"; allowed: name, ttl, count, on, ratio, params, tags, ptr, body, vars, owner`},
		{"nested unknown", "params:\n  r: { enum: [a], patern: x }\n", `f.yaml:2:19: unknown key "patern" in params.r; allowed: enum, pattern`},
		{"duplicate", "name: x\nname: y\n", `f.yaml:2:1: top level: duplicate key "name" (first defined at line 1)`},
		{"bad duration", "ttl: 10\n", `f.yaml:1:6: ttl: expected a duration such as 10m or 1h30m, got 10`},
		{"bad duration string", "ttl: soon\n", `f.yaml:1:6: ttl: expected a duration such as 10m or 1h30m, got "soon"`},
		{"bad int", "count: many\n", `f.yaml:1:8: count: expected an integer, got "many"`},
		{"bad bool", "on: yes\n", `f.yaml:1:5: on: expected true or false, got "yes"`},
		{"list for string", "name: [a]\n", `f.yaml:1:7: name: expected a string, got a list`},
		{"string for list", "tags: a\n", `f.yaml:1:7: tags: expected a list, got "a"`},
		{"string for map", "params: a\n", `f.yaml:1:9: params: expected a mapping, got "a"`},
		{"alias", "name: &a x\nowner: *a\n", `f.yaml:1:7: name: anchors and aliases are not supported` + "\n" + `f.yaml:2:8: owner: anchors and aliases are not supported`},
		{"tag", "name: !!str x\n", `f.yaml:1:7: name: tags are not supported`},
		{"empty", "# nothing\n", `f.yaml:1:1: empty document: expected a mapping`},
		{"two docs", "name: x\n---\nname: y\n", `f.yaml:3:1: only one YAML document is allowed per file`},
		{"not a mapping", "- a\n", `f.yaml:1:1: top level: expected a mapping, got a list`},
		{"syntax", "name: \"x\n", `f.yaml:1:7: invalid YAML: could not find end character of double-quoted text`},
		{"several sorted", "tags: a\nname: [a]\n", "f.yaml:1:7: tags: expected a list, got \"a\"\nf.yaml:2:7: name: expected a string, got a list"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var d doc
			err := Unmarshal("f.yaml", []byte(tt.src), &d)
			var es Errors
			if !errors.As(err, &es) {
				t.Fatalf("err = %v (%T), want Errors", err, err)
			}
			if err.Error() != tt.want {
				t.Fatalf("got\n%s\nwant\n%s", err, tt.want)
			}
		})
	}
}

func TestRaw_Remain(t *testing.T) {
	src := "b:\n  type: vault-lease\n  path: database/creds/x\n  ttl: 5m\n"
	var cfg struct {
		B backend `yaml:"b"`
	}
	if err := Unmarshal("f.yaml", []byte(src), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.B.Type != "vault-lease" || strings.Join(cfg.B.Rest.Keys(), ",") != "path,ttl" {
		t.Fatalf("got %+v keys %v", cfg.B, cfg.B.Rest.Keys())
	}
	var own struct {
		Path string `yaml:"path"`
	}
	err := cfg.B.Rest.Decode(&own)
	if err == nil || err.Error() != `f.yaml:4:3: unknown key "ttl" in b; allowed: path` {
		t.Fatalf("err = %v", err)
	}
	if own.Path != "database/creds/x" {
		t.Fatalf("path = %q", own.Path)
	}
}
