package vaultlease_test

import (
	"strings"
	"testing"

	"github.com/latchbroker/latch/backends/vaultlease"
	"github.com/latchbroker/latch/templates"
)

func TestConfig_RenderCheck(t *testing.T) {
	for path, want := range map[string]vaultlease.RenderCheck{
		"database/creds/{{ .vars.role }}":             {Prefix: "database/creds/", Segments: 3},
		"aws/creds/deploy-{{ .params.service }}":      {Prefix: "aws/creds/", Segments: 3},
		"kv/{{ .params.a }}/x/{{ .params.b }}":        {Prefix: "kv/", Segments: 4},
		"aws/creds/deploy":                            {Prefix: "aws/creds/deploy", Fixed: true, Segments: 3},
		"database/creds/{{ printf \"%s/%s\" .a .b }}": {Prefix: "database/creds/", Segments: 3},
	} {
		if got := (vaultlease.Config{Path: path}).RenderCheck(); got != want {
			t.Errorf("RenderCheck(%q) = %+v, want %+v", path, got, want)
		}
	}
}

// TestRenderCheck: what templates.Evaluate asks of every rendered path,
// and Mint again.
func TestRenderCheck(t *testing.T) {
	role := vaultlease.Config{Path: "database/creds/{{ .vars.role }}"}.RenderCheck()
	fixed := vaultlease.Config{Path: "aws/creds/deploy"}.RenderCheck()
	tests := []struct {
		name  string
		check vaultlease.RenderCheck
		path  string
		want  string // substring of the error; "" = accepted
	}{
		{"OneSegment", role, "database/creds/report-eu", ""},
		{"Fixed", fixed, "aws/creds/deploy", ""},
		{"ErrExtraSegments", role, "database/creds/eu/extra/segments", "has 5 segments where the backend's path template has 3"},
		{"ErrTraversal", role, "database/creds/../../sys/policy/x", "not a clean Vault path"},
		{"ErrTraversalInside", role, "database/creds/eu/../x", "not a clean Vault path"},
		{"ErrEmptySegment", role, "database/creds//x", "not a clean Vault path"},
		{"ErrPrefixOnly", role, "database/creds/", "not a clean Vault path"},
		{"ErrOutside", role, "aws/creds/x", "outside database/creds/"},
		{"ErrSiblingMount", role, "database/credsx/y", "outside database/creds/"},
		{"ErrPercent", role, "database/creds/%2e%2e", "not a clean Vault path"},
		{"ErrQuery", role, "database/creds/a?b", "not a clean Vault path"},
		{"ErrNUL", role, "database/creds/a\x00", "not a clean Vault path"},
		{"ErrNewline", role, "database/creds/a\nb", "not a clean Vault path"},
		{"ErrRLO", role, "database/creds/a\u202Eb", "contains U+202E"},
		{"ErrSpace", role, "database/creds/a b", "contains U+0020"},
		{"ErrNotFixed", fixed, "aws/creds/deploy2", "not the backend's fixed path"},
		{"ErrEmpty", role, "", "not a clean Vault path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.check.CheckRendered(templates.Rendered{Path: tt.path})
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("%q refused: %v", tt.path, err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("Check(%q) = %v, want %q", tt.path, err, tt.want)
			}
		})
	}
}

// TestConfig_Validate_ControlStructures: a path template whose segment
// count would depend on the request does not load.
func TestConfig_Validate_ControlStructures(t *testing.T) {
	err := vaultlease.Config{Path: `database/creds/{{ if .vars.ro }}ro/{{ end }}{{ .vars.role }}`}.Validate()
	if err == nil || !strings.Contains(err.Error(), "may use only {{ ... }} actions") || !strings.Contains(err.Error(), "compute a var") {
		t.Fatalf("Validate = %v", err)
	}
}
