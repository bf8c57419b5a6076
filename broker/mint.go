package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/latchbroker/latch/templates"
)

// mint runs the two-phase issue: intent, (prepare, intent with refs),
// mint, commit. Any failure after something may exist in the backend
// leaves it queued for revocation — or, when even that cannot be written,
// in the intent that reconciliation revokes. approval, when not nil, is
// consumed in the commit: with the lease or not at all.
func (s *core) mint(ctx context.Context, req IssueRequest, d templates.Decision, backend Backend, approval *Approval) (*Issued, error) {
	for attempt := 1; ; attempt++ {
		issued, err := s.mintOnce(ctx, req, d, backend, approval)
		var e *Error
		retired := errors.As(err, &e) && slices.Equal(e.Reasons, []string{ReasonGroupRetired})
		if attempt < groupRetries && (retired || errors.Is(err, ErrGroupGone)) {
			// A bulk revocation took the group in flight: what was
			// minted is withheld and queued for revocation, and the next
			// try opens a new group (or meets the stop that took it).
			continue
		}
		return issued, err
	}
}

// groupRetries bounds the tries of an issue whose group a bulk revocation
// took between its intent and its commit.
const groupRetries = 3

func (s *core) mintOnce(ctx context.Context, req IssueRequest, d templates.Decision, backend Backend, approval *Approval) (*Issued, error) {
	lease := s.newLease(req, d)
	// Owned by this request until it ends: reconciliation leaves it alone.
	defer s.inflight.hold(lease.ID)()
	mreq := mintRequest(lease.ID, req.Agent, d)
	if err := s.writeIntent(ctx, lease, req, d, backend, &mreq); err != nil {
		return nil, err
	}
	failpoint("issue-after-intent")
	mctx, cancel := context.WithTimeout(ctx, s.cfg.MintTimeout)
	defer cancel()
	if p, ok := backend.(Preparer); ok && lease.Refs.IsZero() {
		prepared, err := p.Prepare(mctx, mreq)
		if err != nil {
			return nil, s.mintFailed(ctx, lease, req, d, err)
		}
		mreq.Prepared = prepared
		lease.Refs = prepared.Refs
		if _, err := s.apply(ctx, Change{PutIntents: []*Lease{lease}}); err != nil {
			_ = s.revokeNow(lease) // on failure, the Prepare's refs are lost with the store: they expire within the TTL
			return nil, err
		}
	}
	failpoint("issue-before-mint")
	sctx, span := startSpan(mctx, "latch.mint", attrAgent.String(req.Agent), attrTask.String(req.Task), attrLease.String(lease.ID),
		attrBackend.String(lease.Backend))
	minted, err := backend.Mint(sctx, mreq)
	endSpan(span, err)
	if err != nil {
		return nil, s.mintFailed(ctx, lease, req, d, err)
	}
	failpoint("issue-after-mint")
	lease.Refs = minted.Refs.Merge(lease.Refs)
	if !minted.ExpiresAt.IsZero() && minted.ExpiresAt.Before(lease.ExpiresAt) {
		lease.ExpiresAt = minted.ExpiresAt
	}
	if err := s.commit(ctx, lease, req, d, approval); err != nil {
		return nil, err
	}
	return &Issued{Lease: lease, Secret: minted.Secret}, nil
}

// intentRetries bounds how often an intent is tried again while the
// shared policy it names is being deleted (a deletion takes one Vault
// call, so a few short waits see it through) or its group was retired.
const intentRetries = 6

// writeIntent stores the lease's intent, with its refs when the backend
// knows them from the request alone (Namer), and puts them in
// mreq.Prepared for Mint. An intent that names a shared policy being
// deleted waits for the deletion and is tried again: the next Mint then
// writes the policy anew. One that names a retired group is tried again at
// once in a new group.
func (s *core) writeIntent(ctx context.Context, lease *Lease, req IssueRequest, d templates.Decision, backend Backend, mreq *MintRequest) error {
	intent := Change{PutIntents: []*Lease{lease}, Conditions: s.issueConditions(req.Agent, d, true)}
	if req.RequestID != "" {
		intent.Conditions.Request = &RequestClaim{Agent: req.Agent, RequestID: req.RequestID, Lease: lease.ID}
	}
	n, named := backend.(Namer)
	var failed *ConditionFailed
	for attempt := 0; ; attempt++ {
		if named {
			refs, err := n.Refs(ctx, *mreq)
			if err != nil {
				return s.mintFailed(ctx, lease, req, d, err)
			}
			lease.Refs, mreq.Prepared.Refs = refs, refs
			if _, shared := backend.(PolicyCollector); shared {
				intent.Conditions.Policy = refs.Policy
			}
			intent.Conditions.Group = refs.Group
		}
		_, err := s.apply(ctx, intent)
		retry := errors.As(err, &failed) && attempt < intentRetries
		switch {
		case retry && failed.Reason == ReasonGroupRetired:
			if g, ok := backend.(Grouper); ok {
				g.ForgetGroup(lease.Refs.Group)
			}
			continue
		case retry && failed.Reason == ReasonPolicyDeleting:
		case err != nil:
			return s.refusedAtIntent(ctx, req, d, intent.Conditions, err)
		default:
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(5<<attempt) * time.Millisecond):
		}
	}
}

func asked(req IssueRequest, d templates.Decision) Asked {
	return Asked{Agent: req.Agent, Task: d.Task, TemplateVersion: d.TemplateVersion, Backend: d.Backend,
		Params: d.Params, Reason: req.Reason, TraceID: req.TraceID, RequestID: req.RequestID}
}

func (s *core) newLease(req IssueRequest, d templates.Decision) *Lease {
	now := s.now()
	return &Lease{
		ID:           s.newLeaseID(),
		Asked:        asked(req, d),
		Tier:         d.Tier,
		ApprovalID:   req.ApprovalID,
		Replica:      s.cfg.Replica,
		IssuedAt:     now,
		ExpiresAt:    now.Add(d.TTL),
		MaxExpiresAt: now.Add(d.MaxTTL),
		State:        StatePending,
	}
}

func mintRequest(leaseID, agent string, d templates.Decision) MintRequest {
	mreq := MintRequest{
		LeaseID:         leaseID,
		Agent:           agent,
		Task:            d.Task,
		TemplateVersion: d.TemplateVersion,
		TTL:             d.TTL,
		MaxTTL:          d.MaxTTL,
		Renewable:       d.MaxTTL > d.TTL,
		Policy:          d.Rendered.Policy,
		Path:            d.Rendered.Path,
		Vars:            d.Rendered.Vars,
	}
	if n := d.Rendered.Names; n != nil {
		mreq.Names = CertNames{CommonName: n.CommonName, AltNames: n.AltNames, URISANs: n.URISANs, IPSANs: n.IPSANs}
	}
	return mreq
}

// issueConditions are what the intent (withBudgets) and the commit of a
// lease need of the stored state: the agent still active, no global
// freeze, the template as decided and, for the intent, room in the
// budgets. The intent itself counts toward them from then on.
func (s *core) issueConditions(agent string, d templates.Decision, withBudgets bool) *Conditions {
	c := &Conditions{Agent: agent, NotFrozen: true, Template: d.Task, TemplateVersion: d.TemplateVersion}
	if !withBudgets {
		return c
	}
	p := s.policy.Load()
	if entry, ok := p.Agent(agent); ok {
		c.MaxActive = entry.MaxActive
	}
	if tmpl, ok := p.Template(d.Task); ok {
		c.MaxActiveTask = tmpl.MaxActive
	}
	return c
}

// commit records the minted lease with its audit events (and consumes
// approval). When its conditions fail the credential is withheld: revoked
// and refused. When the store cannot write, it is revoked at once and the
// intent stays for reconciliation.
func (s *core) commit(ctx context.Context, lease *Lease, req IssueRequest, d templates.Decision, approval *Approval) error {
	lease.State = StateActive
	c := Change{
		DeleteIntents: []string{lease.ID},
		PutLeases:     []*Lease{lease},
		Uses:          []Use{{Agent: req.Agent, Template: d.Task, At: lease.IssuedAt}},
		Events:        s.issueEvents(req, d, lease, approval == nil),
		Conditions:    s.issueConditions(req.Agent, d, false),
	}
	c.Conditions.Group = lease.Refs.Group
	// Reconciliation may have ended the intent (its replica was taken for
	// dead: paused, cut off): then what was minted is revoked already.
	c.Conditions.Intent = lease.ID
	if approval != nil {
		// A copy: if the commit fails, the caller's approval is still
		// approved, as the store's is.
		used := *approval
		used.Status, used.ConsumedAt, used.LeaseID = ApprovalConsumed, s.now(), lease.ID
		c.PutApprovals = []*Approval{&used}
		c.Conditions.Approval = approval.Version()
	}
	sctx, span := startSpan(ctx, "latch.commit", attrAgent.String(req.Agent), attrTask.String(req.Task), attrLease.String(lease.ID))
	_, err := s.apply(sctx, c)
	endSpan(span, err)
	var failed *ConditionFailed
	switch {
	case errors.As(err, &failed):
		return s.withhold(ctx, lease, req, d, failed)
	case err != nil:
		// Fail closed (invariant 5): no secret leaves without its record.
		s.revokeUncommitted(ctx, lease)
		return err
	}
	return nil
}

// revokeUncommitted revokes the credential of a lease whose commit failed
// and, when the backend refuses too, records its refs in the intent (best
// effort: the store has just failed), so that reconciliation can revoke
// what the mint created.
func (s *core) revokeUncommitted(ctx context.Context, lease *Lease) {
	if s.revokeNow(lease) == nil {
		return
	}
	intent := *lease
	intent.State = StatePending
	if _, err := s.apply(ctx, Change{PutIntents: []*Lease{&intent}}); err != nil {
		s.log.Error("record the refs of an uncommitted credential", "lease", lease.ID, "err", err)
	}
}

// issueEvents are the events of an issue: the issue itself and, for a
// tier that alerts when nobody approved it (medium by default), an alert
// written with it, so that an alert is never lost.
func (s *core) issueEvents(req IssueRequest, d templates.Decision, lease *Lease, unapproved bool) []Event {
	ev := s.decisionEvent(EventIssue, req, d)
	ev.Lease, ev.Outcome = lease.ID, "issued"
	ev.Details["expires_at"] = lease.ExpiresAt.UTC().Format(time.RFC3339)
	if !d.Alert || !unapproved {
		return []Event{ev}
	}
	alert := s.decisionEvent(EventAlert, req, d)
	alert.Subject, alert.Lease, alert.Outcome = req.Agent, lease.ID, "issued"
	if len(d.TierWhy) > 0 {
		alert.Details["tier_why"] = strings.Join(d.TierWhy, "; ")
	}
	return []Event{ev, alert}
}

// refusedAtIntent turns a failed intent write into the caller's error:
// a failed condition is the denial (or the limit) the request would have
// met a moment later, audited as such; nothing was minted.
func (s *core) refusedAtIntent(ctx context.Context, req IssueRequest, d templates.Decision, c *Conditions, err error) error {
	var failed *ConditionFailed
	if !errors.As(err, &failed) {
		return err
	}
	switch failed.Reason {
	case ReasonAgentBudget, ReasonTemplateBudget:
		return s.budgetError(ctx, c, failed)
	case ReasonRequestInFlight, ReasonRequestServed:
		// A retry of the request through another replica: nothing to
		// audit, the other try is.
		return &Error{Code: ECONFLICT, Message: fmt.Sprintf("request_id %q is being served through another latch replica; ask again to get its lease", req.RequestID),
			Reasons: []string{failed.Reason}}
	}
	ev := s.refusalEvent(req, d, failed)
	if aerr := s.audit(ctx, ev); aerr != nil {
		s.log.Error("audit a refusal", "agent", req.Agent, "task", req.Task, "err", aerr)
	}
	return conditionError(failed)
}

// withhold ends a lease whose credential was minted but whose commit
// conditions failed: the lease is recorded as revoking and withheld (the
// agent never saw it), its revocation is queued durably, and the audit
// shows the refused attempt and the revocation. If even that cannot be
// written, the credential is revoked at once and the intent stays for
// reconciliation.
func (s *core) withhold(ctx context.Context, lease *Lease, req IssueRequest, d templates.Decision, failed *ConditionFailed) error {
	now := s.now()
	reason := "withheld at commit: " + failed.Reason
	lease.State, lease.Withheld, lease.RevokeReason = StateRevoking, true, reason
	refused := s.refusalEvent(req, d, failed)
	refused.Lease = lease.ID
	c := Change{
		DeleteIntents: []string{lease.ID},
		PutLeases:     []*Lease{lease},
		Enqueue:       []Revocation{{LeaseID: lease.ID, Reason: reason, Actor: "latch", NextAttempt: now}},
		Events: []Event{refused, {Type: EventRevoke, Actor: "latch", Subject: lease.Agent, Task: lease.Task, Lease: lease.ID,
			Outcome: "queued", Details: map[string]string{"reason": reason}}},
	}
	if _, err := s.apply(ctx, c); err != nil {
		s.log.Error("record a withheld credential; revoking it now, reconciliation finishes it", "lease", lease.ID, "err", err)
		s.revokeUncommitted(ctx, lease)
	}
	s.wake()
	return conditionError(failed)
}

// refusalEvent is the audit event of a request refused by a failed
// condition: a violation for an agent paused or quarantined (as the
// policy's denial would be), a deny otherwise.
func (s *core) refusalEvent(req IssueRequest, d templates.Decision, failed *ConditionFailed) Event {
	typ := EventDeny
	if violations[templates.ReasonCode(failed.Reason)] {
		typ = EventViolation
		s.metrics.Violation(failed.Reason)
	}
	ev := s.decisionEvent(typ, req, d)
	ev.Outcome, ev.Reasons = string(templates.Deny), []string{failed.Reason}
	ev.Details["condition"] = "failed in flight"
	return ev
}

// conditionError is what the caller of a request refused by a failed
// condition gets: the denial it would have got a moment later.
func conditionError(failed *ConditionFailed) *Error {
	msg := map[string]string{
		string(templates.ReasonAgentPaused):      "denied: an operator paused the agent while the request was in flight",
		string(templates.ReasonAgentQuarantined): "denied: an operator quarantined the agent while the request was in flight",
		string(templates.ReasonGlobalFreeze):     "denied: a global freeze started while the request was in flight",
	}[failed.Reason]
	switch failed.Reason {
	case ReasonPolicyDeleting:
		return &Error{Code: EUNAVAILABLE, Message: "the task's Vault policy is being collected; ask again", Reasons: []string{failed.Reason}}
	case ReasonApprovalChanged:
		return &Error{Code: ECONFLICT, Message: "the approval expired or was picked up while this pickup was in flight; look at it again",
			Reasons: []string{failed.Reason}}
	case ReasonIntentGone:
		return &Error{Code: EUNAVAILABLE, Message: "latch took this request for abandoned (its replica was unreachable) and revoked what it minted; ask again",
			Reasons: []string{failed.Reason}}
	case ReasonGroupRetired:
		return &Error{Code: EUNAVAILABLE, Message: "an operator revoked the agent's credentials of this task while the request was in flight; ask again",
			Reasons: []string{failed.Reason}}
	}
	if msg == "" {
		return &Error{Code: ECONFLICT, Message: "the task's template changed while the request was in flight; ask again",
			Reasons: []string{failed.Reason}}
	}
	return &Error{Code: EFORBIDDEN, Message: msg, Reasons: []string{failed.Reason}}
}

// mintFailed records a failed mint and queues the revocation of anything
// Prepare created.
func (s *core) mintFailed(ctx context.Context, lease *Lease, req IssueRequest, d templates.Decision, cause error) error {
	s.log.Warn("mint failed", "lease", lease.ID, "agent", lease.Agent, "task", lease.Task, "backend", lease.Backend, "err", cause)
	lease.State, lease.Withheld = StateFailed, true
	lease.EndedAt = s.now()
	lease.LastError = cause.Error()
	ev := s.decisionEvent(EventFail, req, d)
	ev.Lease = lease.ID
	ev.Outcome = "failed"
	c := Change{DeleteIntents: []string{lease.ID}, PutLeases: []*Lease{lease}, Events: []Event{ev}}
	if !lease.Refs.IsZero() {
		lease.State = StateRevoking
		c.Enqueue = []Revocation{{LeaseID: lease.ID, Reason: "mint failed", Actor: "latch", NextAttempt: s.now()}}
	}
	if _, err := s.apply(ctx, c); err != nil {
		s.log.Error("record a failed mint; reconciliation will finish it", "lease", lease.ID, "err", err)
	}
	s.wake()
	if errors.Is(cause, ErrBackendUnavailable) || errors.Is(cause, context.DeadlineExceeded) {
		return &Error{Code: EUNAVAILABLE, Message: "the credential backend is unavailable; try again later", Err: cause}
	}
	return &Error{Code: EINTERNAL, Message: "the credential backend refused the request", Err: cause}
}

// revokeNow revokes a just-minted credential whose lease could not be
// committed. It runs detached from the caller's context: the caller has
// gone, the credential must not stay. A failure is left to
// reconciliation, which finds the intent.
func (s *core) revokeNow(lease *Lease) error {
	backend, ok := s.backends[lease.Backend]
	if !ok || lease.Refs.IsZero() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.MintTimeout)
	defer cancel()
	err := backend.Revoke(ctx, lease.Refs)
	if err != nil {
		s.log.Error("revoke an uncommitted credential; reconciliation will retry from the intent", "lease", lease.ID, "err", err)
	}
	return err
}
