package api

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ReportResponse is GET /v1/report: every grant of the policy (agent
// entry × template) with its owner and last use, as of At. With
// ?unused=D (such as 30d) only the grants unused for at least D.
type ReportResponse struct {
	At     time.Time `json:"at"`
	Unused Duration  `json:"unused,omitempty"`
	Grants []Grant   `json:"grants"`
}

// Grant is one row of the report.
type Grant struct {
	Agent    string `json:"agent"` // the entry's SPIFFE ID or prefix pattern
	Owner    string `json:"owner,omitempty"`
	Template string `json:"template"`
	// Since is when latch first loaded a policy with the grant.
	Since time.Time `json:"since,omitzero"`
	// LastUsed is the newest issue under the grant, to LastAgent; absent
	// when never used. Agents counts the distinct agents it issued to.
	LastUsed  time.Time `json:"last_used,omitzero"`
	LastAgent string    `json:"last_agent,omitempty"`
	Agents    int       `json:"agents"`
	// Idle is the time since LastUsed, or since Since when never used.
	Idle Duration `json:"idle"`
}

// ParseAge parses a positive age: whole days as "30d", or a Go duration
// such as "12h" or "90m".
func ParseAge(s string) (time.Duration, error) {
	var d time.Duration
	var err error
	if days, ok := strings.CutSuffix(s, "d"); ok {
		var n int
		n, err = strconv.Atoi(days)
		if err == nil && n > 0 && n <= 100*365 {
			d = time.Duration(n) * 24 * time.Hour
		} else if err == nil {
			err = fmt.Errorf("out of range")
		}
	} else {
		d, err = time.ParseDuration(s)
	}
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%q is not an age: want whole days such as 30d, or a duration such as 12h", s)
	}
	return d, nil
}
