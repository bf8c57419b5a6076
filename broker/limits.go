package broker

import (
	"context"
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/latchbroker/latch/templates"
)

// limiters holds one token bucket per agent ID, built from the agent's
// rate: entry the first time the agent asks. A config reload that changes
// a rate takes effect for agents seen after it (buckets are keyed by the
// rate too).
//
// An agents: pattern can match any number of IDs, so buckets are pruned:
// whenever the map has doubled since the last prune, buckets that have
// filled up again are dropped. A full bucket is what a new one would be,
// so dropping it changes no decision; memory stays bounded by the agents
// that asked within one refill period.
type limiters struct {
	mu      sync.Mutex
	m       map[string]*rate.Limiter
	pruneAt int // the map's size that triggers the next prune
}

// minPrune is the map size below which limiters never prunes.
const minPrune = 1024

func (l *limiters) get(agent string, r templates.Rate, now time.Time) *rate.Limiter {
	key := fmt.Sprintf("%s\x00%d/%s", agent, r.N, r.Per)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m, l.pruneAt = map[string]*rate.Limiter{}, minPrune
	}
	lim, ok := l.m[key]
	if !ok {
		if len(l.m) >= l.pruneAt {
			l.prune(now)
		}
		lim = rate.NewLimiter(rate.Every(r.Per/time.Duration(r.N)), r.N)
		l.m[key] = lim
	}
	return lim
}

// prune drops the buckets that are full at now.
func (l *limiters) prune(now time.Time) {
	for k, lim := range l.m {
		if lim.TokensAt(now) >= float64(lim.Burst()) {
			delete(l.m, k)
		}
	}
	l.pruneAt = max(minPrune, 2*len(l.m))
}

// size is how many buckets are held.
func (l *limiters) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}

// checkRate enforces the agent's request rate. Errors: ELIMIT with
// RetryAfter set.
func (s *core) checkRate(agent string) error {
	entry, ok := s.policy.Load().Agent(agent)
	if !ok || entry.Rate.N <= 0 || entry.Rate.Per <= 0 {
		return nil // Evaluate has already denied an unknown agent
	}
	lim := s.limits.get(agent, entry.Rate, s.now())
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
