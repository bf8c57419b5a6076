package templates

import (
	"slices"
	"testing"
)

// TestTemplate_Paths: every combination of enum values renders; a pattern
// parameter, or more combinations than the limit, cannot be listed.
func TestTemplate_Paths(t *testing.T) {
	const head = "name: t\nbackend: app-db\nttl: 10m\nrisk: low\nvars:\n  role: \"{{ .params.region }}-{{ .params.tier }}\"\n"
	tests := []struct {
		name, params string
		limit        int
		want         []string
		ok           bool
	}{
		{"Enums", "params:\n  region: { enum: [eu, us] }\n  tier: { enum: [ro, rw] }\n", 64,
			[]string{"database/creds/eu-ro", "database/creds/eu-rw", "database/creds/us-ro", "database/creds/us-rw"}, true},
		{"Pattern", "params:\n  region: { enum: [eu, us] }\n  tier: { pattern: \"^[a-z]{2}$\" }\n", 64, nil, false},
		{"OverLimit", "params:\n  region: { enum: [eu, us] }\n  tier: { enum: [ro, rw] }\n", 3, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := loadOne(t, head+tt.params)
			if err != nil {
				t.Fatal(err)
			}
			tm, _ := p.Template("t")
			got, ok := tm.Paths(tt.limit)
			if ok != tt.ok || !slices.Equal(got, tt.want) {
				t.Fatalf("Paths(%d) = %q, %t; want %q, %t", tt.limit, got, ok, tt.want, tt.ok)
			}
		})
	}
}
