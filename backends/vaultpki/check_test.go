package vaultpki_test

import (
	"strings"
	"testing"

	"github.com/latchbroker/latch/backends/vaultpki"
	"github.com/latchbroker/latch/templates"
)

// TestRenderCheck: what templates.Evaluate asks of rendered certificate
// names, and Mint again.
func TestRenderCheck(t *testing.T) {
	ok := templates.Names{CommonName: "search.eu.svc.example.org", AltNames: []string{"search.svc.example.org", "*.search.example.org", "ops@example.org"},
		URISANs: []string{"spiffe://example.org/service/search"}, IPSANs: []string{"10.0.0.1", "::1"}}
	tests := []struct {
		name string
		edit func(*templates.Names)
		want string // substring of the error; "" = accepted
	}{
		{"Valid", func(*templates.Names) {}, ""},
		{"CommonNameOnly", func(n *templates.Names) { *n = templates.Names{CommonName: "x"} }, ""},
		{"ErrNoCommonName", func(n *templates.Names) { n.CommonName = "" }, "no common name"},
		{"ErrCommaInCN", func(n *templates.Names) { n.CommonName = "a.example.org,evil.example.com" }, `common_name "a.example.org,evil.example.com" contains a comma`},
		{"ErrCommaInSAN", func(n *templates.Names) { n.AltNames = []string{"a,b"} }, `alt_names[0] "a,b" contains a comma`},
		{"ErrCommaInURI", func(n *templates.Names) { n.URISANs = []string{"spiffe://x/a,b"} }, "uri_sans[0]"},
		{"ErrCommaInIP", func(n *templates.Names) { n.IPSANs = []string{"10.0.0.1,10.0.0.2"} }, "ip_sans[0]"},
		{"ErrRLOInCN", func(n *templates.Names) { n.CommonName = "a\u202Eb" }, "contains U+202E"},
		{"ErrNewlineInSAN", func(n *templates.Names) { n.AltNames = []string{"a\nb"} }, "contains U+000A"},
		{"ErrNULInCN", func(n *templates.Names) { n.CommonName = "a\x00" }, "contains U+0000"},
		{"ErrSpaceInSAN", func(n *templates.Names) { n.AltNames = []string{"a b"} }, "contains U+0020"},
		{"ErrEmptySAN", func(n *templates.Names) { n.URISANs = []string{""} }, "uri_sans[0] is empty"},
		{"ErrNotDNS", func(n *templates.Names) { n.AltNames = []string{"a/b"} }, "not a DNS name or an e-mail address"},
		{"ErrEmptyLabel", func(n *templates.Names) { n.AltNames = []string{"a..b"} }, "not a DNS name"},
		{"ErrHyphenLabel", func(n *templates.Names) { n.AltNames = []string{"-a.example.org"} }, "not a DNS name"},
		{"ErrNonASCII", func(n *templates.Names) { n.AltNames = []string{"\u0430pple.com"} }, "not a DNS name"},
		{"ErrBadEmail", func(n *templates.Names) { n.AltNames = []string{"@example.org"} }, "not an e-mail address"},
		{"ErrNotURI", func(n *templates.Names) { n.URISANs = []string{"service/search"} }, "not an absolute URI"},
		{"ErrNotIP", func(n *templates.Names) { n.IPSANs = []string{"10.0.0.256"} }, "not an IP address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := ok
			tt.edit(&n)
			err := vaultpki.RenderCheck{}.CheckRendered(templates.Rendered{Names: &n})
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("%+v refused: %v", n, err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("CheckRendered(%+v) = %v, want %q", n, err, tt.want)
			}
		})
	}
	if err := (vaultpki.RenderCheck{}).CheckRendered(templates.Rendered{}); err == nil {
		t.Fatal("no names accepted")
	}
}
