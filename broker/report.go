package broker

import (
	"context"
	"time"

	"github.com/latchbroker/latch/templates"
)

// GrantUse is a grant of the policy and how it has been used: a row of
// the inventory report.
type GrantUse struct {
	Grant
	Owner string
	// LastUsed is the newest issue under the grant, by LastAgent; zero
	// when never used.
	LastUsed  time.Time
	LastAgent string
	// Agents is how many distinct agents the grant has issued to.
	Agents int
}

// Idle is how long the grant has gone unused at now: since its last use,
// or since it was granted when it was never used.
func (g GrantUse) Idle(now time.Time) time.Duration {
	return now.Sub(later(g.LastUsed, g.Since))
}

// Inventory is the report of grants at a time.
type Inventory struct {
	At     time.Time
	Grants []GrantUse
}

// Unused keeps the grants idle for at least d.
func (inv *Inventory) Unused(d time.Duration) []GrantUse {
	var out []GrantUse
	for _, g := range inv.Grants {
		if g.Idle(inv.At) >= d {
			out = append(out, g)
		}
	}
	return out
}

// Report lists every grant of the running policy (agent entry × template,
// in config order) with its last use. It reads the agent records, whose
// per-template last use each issue updates.
func (s *Service) Report(ctx context.Context) (*Inventory, error) {
	p := s.Policy()
	recorded, err := s.store.Grants(ctx)
	if err != nil {
		return nil, unavailable("the store", err)
	}
	agents, err := s.Agents().List(ctx)
	if err != nil {
		return nil, err
	}
	owners := map[string]string{}
	for _, e := range p.Agents() {
		owners[e.Pattern] = e.Owner
	}
	var out []GrantUse
	at := map[[2]string]int{} // (entry pattern, template) → index in out
	for _, g := range grantsOf(p, recorded, time.Time{}) {
		at[[2]string{g.Agent, g.Template}] = len(out)
		out = append(out, GrantUse{Grant: g, Owner: owners[g.Agent]})
	}
	for _, rec := range agents {
		e, ok := p.Agent(rec.ID)
		if !ok {
			continue
		}
		for tmpl, used := range rec.Used {
			i, ok := at[[2]string{e.Pattern, tmpl}]
			if !ok {
				continue // no longer granted
			}
			g := &out[i]
			g.Agents++
			if used.After(g.LastUsed) {
				g.LastUsed, g.LastAgent = used, rec.ID
			}
		}
	}
	return &Inventory{At: s.now(), Grants: out}, nil
}

// grantsOf lists the grants of p in config order, keeping the Since of
// those in recorded and stamping the new ones with now.
func grantsOf(p *templates.Policy, recorded []Grant, now time.Time) []Grant {
	since := make(map[[2]string]time.Time, len(recorded))
	for _, g := range recorded {
		since[[2]string{g.Agent, g.Template}] = g.Since
	}
	out := []Grant{}
	for _, e := range p.Agents() {
		for _, t := range e.Templates {
			g := Grant{Agent: e.Pattern, Template: t, Since: now}
			if s, ok := since[[2]string{e.Pattern, t}]; ok {
				g.Since = s
			}
			out = append(out, g)
		}
	}
	return out
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
