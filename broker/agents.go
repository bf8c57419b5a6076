package broker

import (
	"context"
	"strings"
)

// SetState pauses, quarantines or resumes an agent. Once it returns,
// the state is durable and no lease of the agent commits any more: a
// request in flight is refused at its commit and whatever it minted is
// revoked. Quarantine then revokes every live lease the agent holds,
// including those committed just before. Resuming needs an operator with
// the admin role and a reason, never the admin socket (Authorize).
//
// Errors: EINVALID for an unknown state or a resume without a reason,
// EFORBIDDEN for a resume not allowed to actor, EUNAVAILABLE.
func (s Agents) SetState(ctx context.Context, actor, agent string, state AgentState, reason string) error {
	typ := map[AgentState]EventType{AgentPaused: EventPause, AgentQuarantined: EventQuarantine, AgentActive: EventResume}[state]
	if typ == "" {
		return Errorf(EINVALID, "unknown agent state %q (want active, paused or quarantined)", state)
	}
	if state == AgentActive {
		if err := s.authorizeReopen(ctx, actor, agent, reason); err != nil {
			return err
		}
	}
	rec := AgentRecord{ID: agent, State: state, Reason: reason, Actor: actor, ChangedAt: s.now()}
	// The in-memory state first, under the lock, so that no request is
	// decided with the old state once the change is being written; the
	// store's commit conditions catch those decided before.
	s.mu.Lock()
	old, had := s.agents[agent]
	s.agents[agent] = state
	s.mu.Unlock()
	_, err := s.apply(ctx, Change{AgentStates: []AgentRecord{rec}, Events: []Event{{Type: typ, Actor: actor, Subject: agent,
		Outcome: string(state), Details: map[string]string{"reason": reason}}}})
	if err != nil {
		s.mu.Lock()
		if had {
			s.agents[agent] = old
		} else {
			delete(s.agents, agent)
		}
		s.mu.Unlock()
		return err
	}
	if state == AgentQuarantined {
		_, err = Leases{s.core}.Revoke(ctx, actor, "agent quarantined: "+reason, RevokeSelector{Agent: agent})
	}
	return err
}

// SetFreeze starts or ends the global emergency freeze, which denies every
// task while on. Once a start returns, no lease commits until the end: a
// request in flight is refused at its commit and what it minted revoked.
// Ending it needs an operator with the admin role and a reason, never the
// admin socket. Errors: EINVALID, EFORBIDDEN (see SetState),
// EUNAVAILABLE.
func (s Agents) SetFreeze(ctx context.Context, actor string, on bool, reason string) error {
	typ := EventUnfreeze
	if on {
		typ = EventFreeze
	} else if err := s.authorizeReopen(ctx, actor, "", reason); err != nil {
		return err
	}
	fs := FreezeState{Active: on, Reason: reason, Actor: actor, Since: s.now()}
	s.mu.Lock()
	old := s.frozen
	s.frozen = on
	s.mu.Unlock()
	_, err := s.apply(ctx, Change{Freeze: &fs, Events: []Event{{Type: typ, Actor: actor, Outcome: map[bool]string{true: "on", false: "off"}[on],
		Details: map[string]string{"reason": reason}}}})
	if err != nil {
		s.mu.Lock()
		s.frozen = old
		s.mu.Unlock()
	}
	return err
}

// authorizeReopen lets a resume (of subject) or a freeze end through only
// for a person with the admin role who says why; a refusal is audited as
// a violation.
func (s *core) authorizeReopen(ctx context.Context, actor, subject, reason string) error {
	if strings.TrimSpace(reason) == "" {
		return Errorf(EINVALID, "resuming an agent or ending a freeze needs a reason")
	}
	if err := authorizeIn(ctx, s, actor, ActionReopen, ""); err != nil {
		return s.refuse(ctx, Event{Actor: actor, Subject: subject}, err.(*Error))
	}
	return nil
}

// Get returns what latch remembers of one agent: a record with only ID
// and state active when nothing.
func (s Agents) Get(ctx context.Context, id string) (AgentRecord, error) {
	return stored(s.store.Agent(ctx, id))
}

// List lists every agent latch holds a record of (it got a credential,
// or an operator changed its state), with state and last use.
func (s Agents) List(ctx context.Context) ([]AgentRecord, error) {
	return stored(s.store.Agents(ctx))
}
