package vault

import (
	"encoding/json"
	"testing"
	"time"
)

func TestTokenEnd(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	created := json.Number("1799996400") // an hour ago
	tests := []struct {
		name string
		data map[string]any
		want time.Time
	}{
		{"Periodic", map[string]any{"ttl": json.Number("3600"), "renewable": true, "period": json.Number("3600"), "creation_time": created}, time.Time{}},
		{"NeverExpires", map[string]any{"ttl": json.Number("0"), "renewable": false}, time.Time{}},
		{"NotRenewable", map[string]any{"ttl": json.Number("600"), "renewable": false}, now.Add(10 * time.Minute)},
		{"ExplicitMax", map[string]any{"ttl": json.Number("3600"), "renewable": true, "explicit_max_ttl": json.Number("7200"), "creation_time": created}, now.Add(time.Hour)},
		{"BothTheEarlier", map[string]any{"ttl": json.Number("600"), "renewable": false, "explicit_max_ttl": json.Number("7200"), "creation_time": created}, now.Add(10 * time.Minute)},
		{"MountMaxOnly", map[string]any{"ttl": json.Number("3600"), "renewable": true, "creation_time": created}, time.Time{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, _ := tokenEnd(tt.data, now); !got.Equal(tt.want) {
				t.Fatalf("tokenEnd = %s, want %s", got, tt.want)
			}
		})
	}
}
