package templates

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/latchbroker/latch/templates/strictyaml"
)

// Risk tier names, lowest first.
const (
	TierLow      = "low"
	TierMedium   = "medium"
	TierHigh     = "high"
	TierCritical = "critical"
)

var tierNames = []string{TierLow, TierMedium, TierHigh, TierCritical}

// maxApprovals bounds a tier's quorum; more would be unreachable in practice
// and usually a typo.
const maxApprovals = 10

// Tier is a risk tier after defaults and config are applied.
type Tier struct {
	Name string
	// Level orders tiers: 0 low … 3 critical. Escalation only raises it.
	Level int
	// Approvals is how many distinct approvers a request needs (0 = none).
	Approvals int
	// MaxTTL caps the lease TTL for this tier; 0 means only the template's
	// max_ttl applies.
	MaxTTL time.Duration
	// Alert asks the broker to raise an alert event when a lease is issued
	// at this tier even though no approval is needed.
	Alert bool
}

// DefaultTiers are the tiers before risk_tiers: applies: low is automatic,
// medium automatic with an alert, high needs one approval, critical two
// approvals and a shorter max TTL.
func DefaultTiers() []Tier {
	return []Tier{
		{Name: TierLow, Level: 0},
		{Name: TierMedium, Level: 1, Alert: true},
		{Name: TierHigh, Level: 2, Approvals: 1, MaxTTL: time.Hour, Alert: true},
		{Name: TierCritical, Level: 3, Approvals: 2, MaxTTL: 15 * time.Minute, Alert: true},
	}
}

func tierLevel(name string) (int, bool) {
	for i, n := range tierNames {
		if n == name {
			return i, true
		}
	}
	return 0, false
}

func unknownTier(name string) string {
	return fmt.Sprintf("unknown tier %q; allowed: %s", name, strings.Join(tierNames, ", "))
}

// buildTiers applies risk_tiers: to the defaults.
func buildTiers(cfg map[string]TierConfig) ([]Tier, strictyaml.Errors) {
	var errs strictyaml.Errors
	tiers := DefaultTiers()
	names := make([]string, 0, len(cfg))
	for n := range cfg {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		tc := cfg[name]
		path := "risk_tiers." + name
		lvl, ok := tierLevel(name)
		if !ok {
			errs = append(errs, tc.At.Errorf("%s: %s", path, unknownTier(name)))
			continue
		}
		t := &tiers[lvl]
		if tc.Approvals != nil {
			if a := *tc.Approvals; a < 0 || a > maxApprovals {
				errs = append(errs, tc.ApprovalsAt.Errorf("%s.approvals: must be between 0 and %d, got %d", path, maxApprovals, a))
			} else {
				t.Approvals = a
			}
		}
		if tc.MaxTTL < 0 {
			errs = append(errs, tc.MaxTTLAt.Errorf("%s.max_ttl: must not be negative", path))
		} else if tc.MaxTTL > 0 {
			t.MaxTTL = tc.MaxTTL
		}
		if tc.Alert != nil {
			t.Alert = *tc.Alert
		}
	}
	for i := 1; i < len(tiers); i++ {
		if tiers[i].Approvals < tiers[i-1].Approvals {
			at := cfg[tiers[i].Name].ApprovalsAt
			if at.IsZero() {
				at = cfg[tiers[i-1].Name].ApprovalsAt
			}
			errs = append(errs, at.Errorf("risk_tiers.%s.approvals: %d is fewer than %s's %d; a higher tier may not need fewer approvals",
				tiers[i].Name, tiers[i].Approvals, tiers[i-1].Name, tiers[i-1].Approvals))
		}
	}
	return tiers, errs
}
