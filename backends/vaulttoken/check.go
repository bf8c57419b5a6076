package vaulttoken

import (
	"errors"
	"strings"

	"github.com/latchbroker/latch/templates"
)

// RenderCheck is what the backend asks of a rendered policy: that there
// is one. templates.Evaluate runs it (wired in by backends/catalog), and
// Mint runs it again. What a policy may say is kept in check upstream:
// parameters hold only allowlisted characters (no quote, brace, * or +
// can reach the HCL), and the template's own text is the administrator's.
type RenderCheck struct{}

var _ templates.RenderCheck = RenderCheck{}

// CheckRendered checks r.Policy; see CheckPolicy.
func (RenderCheck) CheckRendered(r templates.Rendered) error { return CheckPolicy(r.Policy) }

// CheckPolicy refuses an empty or all-whitespace policy: there is nothing
// to grant, and Vault would refuse to write it anyway, but only at mint,
// after an approver was asked.
func CheckPolicy(policy string) error {
	if strings.TrimSpace(policy) == "" {
		return errors.New("no policy was rendered")
	}
	return nil
}
