package broker

import (
	"context"
	"fmt"
	"time"

	"golang.org/x/time/rate"

	"github.com/latchbroker/latch/templates"
)

// checkRate enforces the agent's request rate. Errors: ELIMIT with
// RetryAfter set.
func (s *core) checkRate(agent string) error {
	entry, ok := s.policy.Load().Agent(agent)
	if !ok || entry.Rate.N <= 0 || entry.Rate.Per <= 0 {
		return nil // Evaluate has already denied an unknown agent
	}
	// The rate is in the key: a reload that changes it takes effect for
	// the agent at once, with a fresh bucket.
	key := fmt.Sprintf("%s\x00%d/%s", agent, entry.Rate.N, entry.Rate.Per)
	lim := s.limits.Get(key, rate.Every(entry.Rate.Per/time.Duration(entry.Rate.N)), entry.Rate.N, s.now())
	r := lim.ReserveN(s.now(), 1)
	if delay := r.DelayFrom(s.now()); delay > 0 {
		r.CancelAt(s.now())
		return &Error{Code: ELIMIT, Message: fmt.Sprintf("rate limit of %d per %s exceeded", entry.Rate.N, entry.Rate.Per),
			Reasons: []string{"rate_limited"}, RetryAfter: delay}
	}
	return nil
}

// checkBudgets says whether the agent has room for one more lease of task
// now. The store's conditions decide for real when the intent is written;
// this earlier look keeps an approval over budget from reaching the
// approvers. Errors: ELIMIT, EUNAVAILABLE.
func (s *core) checkBudgets(ctx context.Context, agent string, d templates.Decision) error {
	c := s.issueConditions(agent, d, true)
	if c.MaxActive == 0 && c.MaxActiveTask == 0 {
		return nil
	}
	live, err := s.store.Leases(ctx, LeaseFilter{Agent: agent, LiveOnly: true})
	if err != nil {
		return unavailable("the lease store", err)
	}
	ofTask := 0
	for _, l := range live {
		if l.Task == d.Task {
			ofTask++
		}
	}
	switch {
	case c.MaxActive > 0 && len(live) >= c.MaxActive:
		return s.budgetError(ctx, c, &ConditionFailed{Reason: ReasonAgentBudget, Held: len(live)})
	case c.MaxActiveTask > 0 && ofTask >= c.MaxActiveTask:
		return s.budgetError(ctx, c, &ConditionFailed{Reason: ReasonTemplateBudget, Held: ofTask})
	}
	return nil
}

// budgetError is the caller's error for a budget of c that failed, with
// RetryAfter set to when the soonest of the agent's leases ends (a second
// at least: leases being minted or revoked end soon).
func (s *core) budgetError(ctx context.Context, c *Conditions, failed *ConditionFailed) error {
	next := time.Time{}
	if live, err := s.store.Leases(ctx, LeaseFilter{Agent: c.Agent, State: StateActive}); err == nil {
		for _, l := range live {
			if next.IsZero() || l.ExpiresAt.Before(next) {
				next = l.ExpiresAt
			}
		}
	}
	retry := max(next.Sub(s.now()), time.Second)
	msg := fmt.Sprintf("agent holds %d live leases, its budget is %d", failed.Held, c.MaxActive)
	if failed.Reason == ReasonTemplateBudget {
		msg = fmt.Sprintf("agent holds %d live leases of %s, the template's budget is %d", failed.Held, c.Template, c.MaxActiveTask)
	}
	return &Error{Code: ELIMIT, Message: msg, Reasons: []string{failed.Reason}, RetryAfter: retry}
}
