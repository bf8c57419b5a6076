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
type limiters struct {
	mu sync.Mutex
	m  map[string]*rate.Limiter
}

func (l *limiters) get(agent string, r templates.Rate) *rate.Limiter {
	key := fmt.Sprintf("%s\x00%d/%s", agent, r.N, r.Per)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[string]*rate.Limiter{}
	}
	lim, ok := l.m[key]
	if !ok {
		lim = rate.NewLimiter(rate.Every(r.Per/time.Duration(r.N)), r.N)
		l.m[key] = lim
	}
	return lim
}

// checkLimits enforces the agent's request rate and the lease budgets
// (max_active of the agent entry and of the template) before anything is
// minted. Errors: ELIMIT with RetryAfter set, EUNAVAILABLE.
func (s *Service) checkLimits(ctx context.Context, agent string, d templates.Decision) error {
	p := s.Policy()
	entry, ok := p.Agent(agent)
	if !ok {
		return nil // Evaluate has already denied an unknown agent
	}
	if entry.Rate.N > 0 && entry.Rate.Per > 0 {
		lim := s.limits.get(agent, entry.Rate)
		r := lim.ReserveN(s.now(), 1)
		if delay := r.DelayFrom(s.now()); delay > 0 {
			r.CancelAt(s.now())
			return &Error{Code: ELIMIT, Message: fmt.Sprintf("rate limit of %d per %s exceeded", entry.Rate.N, entry.Rate.Per),
				Reasons: []string{"rate_limited"}, RetryAfter: delay}
		}
	}
	tmpl, _ := p.Template(d.Task)
	if entry.MaxActive == 0 && (tmpl == nil || tmpl.MaxActive == 0) {
		return nil
	}
	active, err := s.store.Leases(ctx, LeaseFilter{Agent: agent, State: StateActive})
	if err != nil {
		return unavailable("the lease store", err)
	}
	ofTask := 0
	next := time.Time{} // when the soonest lease of the budget ends
	for _, l := range active {
		if l.Task == d.Task {
			ofTask++
		}
		if next.IsZero() || l.ExpiresAt.Before(next) {
			next = l.ExpiresAt
		}
	}
	retry := max(next.Sub(s.now()), time.Second)
	if entry.MaxActive > 0 && len(active) >= entry.MaxActive {
		return &Error{Code: ELIMIT, Message: fmt.Sprintf("agent holds %d active leases, its budget is %d", len(active), entry.MaxActive),
			Reasons: []string{"agent_budget"}, RetryAfter: retry}
	}
	if tmpl != nil && tmpl.MaxActive > 0 && ofTask >= tmpl.MaxActive {
		return &Error{Code: ELIMIT, Message: fmt.Sprintf("agent holds %d active leases of %s, the template's budget is %d", ofTask, d.Task, tmpl.MaxActive),
			Reasons: []string{"template_budget"}, RetryAfter: retry}
	}
	return nil
}
