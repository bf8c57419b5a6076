package notify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"time"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/templates"
)

// AutoPauseActor is the actor of the pauses AutoPause makes, as the audit
// log records them.
const AutoPauseActor = "latch"

// AutoPauseConfig configures AutoPause. Auto-pausing is off unless a
// server runs an AutoPause: Threshold and Window are both required.
type AutoPauseConfig struct {
	// Threshold denials of one agent within Window pause it.
	Threshold int
	Window    time.Duration
	Logger    *slog.Logger
}

// notCounted are denial reasons that say nothing about the agent's
// behaviour: policy schedules, operators' own actions, config bugs.
var notCounted = []string{
	string(templates.ReasonFrozen), string(templates.ReasonGlobalFreeze), string(templates.ReasonAgentPaused),
	string(templates.ReasonAgentQuarantined), string(templates.ReasonRenderFailed),
}

// AutoPause pauses an agent whose requests are denied (deny and violation
// events) Threshold times within Window. Only registered agents are
// counted, denials for freezes, pauses and render failures are not, and an
// agent that is not active is left as it is. The pause is an ordinary
// pause event (actor AutoPauseActor, with the count in its reason), so it
// is audited and, through a Notifier, notified; an operator resumes the
// agent as after any pause.
type AutoPause struct {
	threshold int
	window    time.Duration
	log       *slog.Logger
}

// NewAutoPause checks cfg.
func NewAutoPause(cfg AutoPauseConfig) (*AutoPause, error) {
	if cfg.Threshold < 1 || cfg.Window <= 0 {
		return nil, errors.New("notify: auto-pause needs a threshold ≥ 1 and a window > 0")
	}
	a := &AutoPause{threshold: cfg.Threshold, window: cfg.Window, log: cfg.Logger}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	return a, nil
}

// autoPauseRetry is the wait before AutoPause follows the audit events
// again after a failure to read them.
const autoPauseRetry = time.Second

// Run watches the denials of src (svc.Audit() but for tests) from now
// until ctx ends, pausing through svc, and returns nil then.
// It sees every one, in order: a burst of denials is counted however fast
// it comes, and a failure to read the audit log is logged and resumed
// from the last denial seen.
func (a *AutoPause) Run(ctx context.Context, src Source, svc *broker.Service) error {
	denials := broker.EventFilter{Types: []broker.EventType{broker.EventDeny, broker.EventViolation}}
	recent := map[string][]time.Time{}
	var after uint64
	started := false
	followRetrying(ctx, a.log, "auto-pause", autoPauseRetry, func() error {
		if !started {
			last, err := src.LastSeq(ctx)
			if err != nil {
				return err
			}
			after, started = last, true
		}
		return src.Follow(ctx, after, denials, func(evs []broker.Event) error {
			for _, e := range evs {
				after = e.Seq
				a.observe(ctx, svc, recent, e)
			}
			return nil
		})
	})
	return nil
}

// observe counts one denial in recent (the denials within the window, by
// agent) and pauses the agent when they reach the threshold.
func (a *AutoPause) observe(ctx context.Context, svc *broker.Service, recent map[string][]time.Time, e broker.Event) {
	agent := e.Actor
	if agent == "" || slices.ContainsFunc(e.Reasons, func(r string) bool { return slices.Contains(notCounted, r) }) {
		return
	}
	if _, ok := svc.Policy().Agent(agent); !ok {
		return
	}
	// A coalesced event stands for Details["count"] denials.
	n := 1
	if c, err := strconv.Atoi(e.Details["count"]); err == nil && e.Outcome == broker.OutcomeCoalesced {
		n = min(max(c, 1), a.threshold)
	}
	ts := recent[agent]
	for range n {
		ts = append(ts, e.Time)
	}
	ts = slices.DeleteFunc(ts, func(t time.Time) bool { return e.Time.Sub(t) >= a.window })
	recent[agent] = ts
	// Forget agents whose denials have all aged out.
	for id, t := range recent {
		if len(t) == 0 || e.Time.Sub(t[len(t)-1]) >= a.window {
			delete(recent, id)
		}
	}
	if len(ts) < a.threshold {
		return
	}
	delete(recent, agent)
	a.pause(ctx, svc, agent, len(ts), e)
}

func (a *AutoPause) pause(ctx context.Context, svc *broker.Service, agent string, n int, last broker.Event) {
	r, err := svc.Agents().Get(ctx, agent)
	if err != nil {
		a.log.Error("auto-pause: read the agent's state", "agent", agent, "err", err)
		return
	}
	if r.State != "" && r.State != broker.AgentActive {
		return // paused or quarantined already: never downgrade
	}
	reason := fmt.Sprintf("auto-pause: %d denials within %s (last: %s %v)", n, a.window, last.Type, last.Reasons)
	if err := svc.Agents().SetState(ctx, AutoPauseActor, agent, broker.AgentPaused, reason); err != nil {
		a.log.Error("auto-pause an agent", "agent", agent, "err", err)
		return
	}
	a.log.Warn("agent paused after repeated denials", "agent", agent, "denials", n, "window", a.window)
}
