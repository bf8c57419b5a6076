package vaultpki

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strings"
	"unicode"

	"github.com/latchbroker/latch/templates"
)

// RenderCheck is the syntax every set of certificate names a template
// renders must have. templates.Evaluate runs it (wired in by
// backends/catalog), so a request whose names the backend would refuse is
// denied before an approver sees it; Mint runs it again.
type RenderCheck struct{}

var _ templates.RenderCheck = RenderCheck{}

// CheckRendered checks r.Names; see CheckNames.
func (RenderCheck) CheckRendered(r templates.Rendered) error {
	if r.Names == nil {
		return errors.New("no certificate names were rendered")
	}
	n := r.Names
	return CheckNames(n.CommonName, n.AltNames, n.URISANs, n.IPSANs)
}

// CheckNames checks certificate names as Vault takes them: a common name,
// DNS names or e-mail addresses, URIs with a scheme, IP addresses. Vault
// takes each list comma-separated, so a comma inside a name would smuggle
// in another one; whitespace, control and invisible format characters
// have no place in any of them.
func CheckNames(commonName string, altNames, uriSANs, ipSANs []string) error {
	if commonName == "" {
		return errors.New("no common name was rendered")
	}
	if err := checkChars("common_name", commonName); err != nil {
		return err
	}
	for i, v := range altNames {
		if err := checkAltName(fmt.Sprintf("alt_names[%d]", i), v); err != nil {
			return err
		}
	}
	for i, v := range uriSANs {
		if err := checkURI(fmt.Sprintf("uri_sans[%d]", i), v); err != nil {
			return err
		}
	}
	for i, v := range ipSANs {
		key := fmt.Sprintf("ip_sans[%d]", i)
		if err := checkChars(key, v); err != nil {
			return err
		}
		if _, err := netip.ParseAddr(v); err != nil {
			return fmt.Errorf("%s %q is not an IP address", key, v)
		}
	}
	return nil
}

// checkChars refuses an empty name, a comma, and any whitespace, control
// or format character.
func checkChars(key, v string) error {
	if v == "" {
		return fmt.Errorf("%s is empty", key)
	}
	if strings.Contains(v, ",") {
		return fmt.Errorf("%s %q contains a comma, which Vault would read as a second name", key, v)
	}
	if i := strings.IndexFunc(v, func(r rune) bool {
		return unicode.IsSpace(r) || unicode.Is(unicode.Cc, r) || unicode.Is(unicode.Cf, r)
	}); i >= 0 {
		return fmt.Errorf("%s %q contains %U, which no certificate name may hold", key, v, []rune(v[i:])[0])
	}
	return nil
}

// checkAltName accepts a DNS name (a leading "*." for a wildcard) or an
// e-mail address, the two kinds Vault's alt_names parses.
func checkAltName(key, v string) error {
	if err := checkChars(key, v); err != nil {
		return err
	}
	host := strings.TrimPrefix(v, "*.")
	if local, domain, ok := strings.Cut(v, "@"); ok {
		if local == "" || strings.Contains(domain, "@") {
			return fmt.Errorf("%s %q is not an e-mail address", key, v)
		}
		host = domain
	}
	if !dnsName(host) {
		return fmt.Errorf("%s %q is not a DNS name or an e-mail address", key, v)
	}
	return nil
}

// dnsName reports whether s is a DNS name: dot-separated labels of ASCII
// letters, digits, - and _ (1 to 63 bytes, no - at either end), at most
// 253 bytes in all.
func dnsName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_'
			if !ok {
				return false
			}
		}
	}
	return true
}

// checkURI accepts an absolute URI, such as spiffe://example.org/service/x.
func checkURI(key, v string) error {
	if err := checkChars(key, v); err != nil {
		return err
	}
	u, err := url.Parse(v)
	if err != nil || u.Scheme == "" || u.Opaque == "" && u.Host == "" && u.Path == "" {
		return fmt.Errorf("%s %q is not an absolute URI", key, v)
	}
	return nil
}
