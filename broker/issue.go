package broker

import (
	"context"
	"errors"
	"maps"
	"strings"
	"time"

	"github.com/latchbroker/latch/templates"
)

// IssueRequest is a credential request from an agent whose identity the
// caller has verified.
type IssueRequest struct {
	Agent      string // verified SPIFFE ID
	Task       string
	Params     map[string]string
	Reason     string
	TraceID    string
	RequestID  string        // optional: retries with the same ID get the same lease
	TTL        time.Duration // 0: the template's default
	ApprovalID string        // picks up an approved request (see Issue)
}

// Issued is the result of a successful Issue: a lease and its secret, or,
// when the request needs approval, a pending approval.
type Issued struct {
	Lease  *Lease
	Secret Secret
	// Pending, when set, is the approval the request is waiting for, and
	// Lease is nil: nothing was minted. The agent waits for the approval
	// (WaitApproval) and picks it up with IssueRequest.ApprovalID.
	Pending *Approval
	// Replayed is set when RequestID named an earlier request: Lease (or
	// Pending) is that request's, and Secret is empty, because latch never
	// keeps secrets to hand out twice.
	Replayed bool
	Decision templates.Decision
}

// violations are the deny reasons that point at misuse rather than at
// timing: they are audited as violation events and alerted on.
var violations = map[templates.ReasonCode]bool{
	templates.ReasonUnknownAgent:     true,
	templates.ReasonUnknownTask:      true,
	templates.ReasonTaskNotGranted:   true,
	templates.ReasonUnknownParam:     true,
	templates.ReasonParamConstraint:  true,
	templates.ReasonAgentPaused:      true,
	templates.ReasonAgentQuarantined: true,
}

// Explain evaluates a request without issuing anything.
func (s *Service) Explain(req IssueRequest) templates.Decision {
	return s.Policy().Evaluate(s.templatesRequest(req))
}

func (s *Service) templatesRequest(req IssueRequest) templates.Request {
	return templates.Request{
		Agent:        req.Agent,
		Task:         req.Task,
		Params:       req.Params,
		TTL:          req.TTL,
		Now:          s.now(),
		AgentState:   s.agentState(req.Agent),
		GlobalFreeze: s.isFrozen(),
	}
}

// Issue decides req and, when allowed, mints the credential through the
// template's backend. The lease is recorded before the secret is returned:
// an intent is stored before the backend is called, and the lease is
// committed with its audit event in one transaction after.
//
// A request that needs approval is not an error: Issue records a pending
// approval and returns it in Issued.Pending. A pickup (req.ApprovalID) is
// decided again when it arrives and mints then: the approval must be this
// agent's and approved, and Task and Params those approved (both empty
// means "as approved"); TTL may be shorter than approved, never longer.
//
// Errors (*Error codes): EFORBIDDEN for a policy denial (with reasons and
// NextAllowedAt) or a denied approval, EUNAVAILABLE when the backend or the
// audit log cannot be reached, EINTERNAL for a backend that refused; for a
// pickup also ENOTFOUND (no such approval of this agent's) and ECONFLICT
// (still pending, already used, expired, or not the request approved).
func (s *Service) Issue(ctx context.Context, req IssueRequest) (*Issued, error) {
	start := time.Now()
	res, reason, err := s.issue(ctx, req)
	outcome := "issued"
	switch {
	case err == nil && res.Pending != nil:
		outcome = "pending"
	case err != nil && ErrorCode(err) == EFORBIDDEN:
		outcome = "denied"
	case err != nil && ErrorCode(err) == ELIMIT:
		outcome = "limited"
	case err != nil:
		outcome = "failed"
	}
	s.metrics.RequestDone(outcome, reason, time.Since(start))
	return res, err
}

func (s *Service) issue(ctx context.Context, req IssueRequest) (*Issued, string, error) {
	if req.RequestID != "" {
		// Serialise retries of one request, so that two copies racing
		// each other cannot both mint.
		defer s.requestLocks.lock(req.Agent + "\x00" + req.RequestID)()
		prev, err := s.store.LeaseByRequest(ctx, req.Agent, req.RequestID)
		if err == nil && prev.State == StateFailed {
			// Nothing was minted for it: a retry after a failed mint (the
			// backend was down) tries again rather than replaying the
			// failure forever.
			err = ErrLeaseNotFound
		} else if err == nil {
			if prev.Task != req.Task && !(req.Task == "" && req.ApprovalID != "") {
				return nil, "request_id_reused", Errorf(ECONFLICT, "request_id %q was already used for task %q", req.RequestID, prev.Task)
			}
			return &Issued{Lease: prev, Replayed: true}, "replayed", nil
		}
		if !errors.Is(err, ErrLeaseNotFound) {
			return nil, "store", unavailable("the lease store", err)
		}
		if req.ApprovalID == "" {
			if res, reason, err := s.replayApproval(ctx, req); res != nil || err != nil {
				return res, reason, err
			}
		}
	}

	if req.ApprovalID != "" {
		return s.pickup(ctx, req)
	}

	d := s.Policy().Evaluate(s.templatesRequest(req))
	switch d.Outcome {
	case templates.Deny:
		return nil, s.deny(ctx, req, d), deniedError(d)
	case templates.ApprovalRequired:
		return s.requestApproval(ctx, req, d)
	}
	return s.issueAllowed(ctx, req, d, nil)
}

// issueAllowed mints what an allowed decision (or an approved pickup, with
// its approval) grants, within the agent's limits.
func (s *Service) issueAllowed(ctx context.Context, req IssueRequest, d templates.Decision, approval *Approval) (*Issued, string, error) {
	if err := s.checkLimits(ctx, req.Agent, d); err != nil {
		return nil, "limit", err
	}
	backend, ok := s.backends[d.Backend]
	if !ok {
		s.log.Error("template names a backend that is not configured", "task", d.Task, "backend", d.Backend)
		return nil, "backend_missing", Errorf(EINTERNAL, "backend %q of task %q is not configured", d.Backend, d.Task)
	}
	issued, err := s.mint(ctx, req, d, backend, approval)
	if err != nil {
		return nil, "mint", err
	}
	issued.Decision = d
	return issued, "", nil
}

// deny records a denial and returns the error for the caller.
func (s *Service) deny(ctx context.Context, req IssueRequest, d templates.Decision) string {
	typ := EventDeny
	code := ""
	if len(d.Reasons) > 0 {
		code = string(d.Reasons[0].Code)
	}
	for _, r := range d.Reasons {
		if violations[r.Code] {
			typ = EventViolation
			s.metrics.Violation(string(r.Code))
		}
	}
	if err := s.audit(ctx, s.decisionEvent(typ, req, d)); err != nil {
		// The denial stands either way; only the record is missing.
		s.log.Error("audit a denial", "agent", req.Agent, "task", req.Task, "err", err)
	}
	return code
}

func (s *Service) decisionEvent(typ EventType, req IssueRequest, d templates.Decision) Event {
	ev := Event{
		Type:    typ,
		Actor:   req.Agent,
		Task:    req.Task,
		Outcome: string(d.Outcome),
		Reasons: reasonCodes(d.Reasons),
		Details: map[string]string{},
	}
	if req.Reason != "" {
		ev.Details["reason"] = req.Reason
	}
	if req.TraceID != "" {
		ev.Details["trace_id"] = req.TraceID
	}
	if d.Tier != "" {
		ev.Details["tier"] = d.Tier
	}
	if d.TemplateVersion != "" {
		ev.Details["template_version"] = d.TemplateVersion
	}
	if req.ApprovalID != "" {
		ev.Details["approval_id"] = req.ApprovalID
	}
	if !d.NextAllowedAt.IsZero() {
		ev.Details["next_allowed_at"] = d.NextAllowedAt.UTC().Format(time.RFC3339)
	}
	return ev
}

func reasonCodes(rs []templates.Reason) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = string(r.Code)
		if r.Window != "" {
			out[i] += ":" + r.Window
		}
	}
	return out
}

// deniedError maps a deny decision to the caller's error.
func deniedError(d templates.Decision) *Error {
	e := &Error{Code: EFORBIDDEN, Message: "denied", Reasons: reasonCodes(d.Reasons), NextAllowedAt: d.NextAllowedAt}
	if len(d.Reasons) > 0 {
		e.Message = "denied: " + d.Reasons[0].Message
	}
	return e
}

// mint runs the two-phase issue: intent, (prepare, intent with refs),
// mint, commit. Any failure after something may exist in the backend
// leaves it queued for revocation — or, when even that cannot be written,
// in the intent that reconciliation revokes at the next start. approval,
// when not nil, is consumed in the commit: with the lease or not at all.
func (s *Service) mint(ctx context.Context, req IssueRequest, d templates.Decision, backend Backend, approval *Approval) (*Issued, error) {
	now := s.now()
	lease := &Lease{
		ID:              s.newLeaseID(),
		Agent:           req.Agent,
		Task:            d.Task,
		TemplateVersion: d.TemplateVersion,
		Backend:         d.Backend,
		Params:          d.Params,
		Reason:          req.Reason,
		TraceID:         req.TraceID,
		RequestID:       req.RequestID,
		Tier:            d.Tier,
		ApprovalID:      req.ApprovalID,
		IssuedAt:        now,
		ExpiresAt:       now.Add(d.TTL),
		MaxExpiresAt:    now.Add(d.MaxTTL),
		State:           StatePending,
	}
	if _, err := s.apply(ctx, Change{PutIntents: []*Lease{lease}}); err != nil {
		return nil, err
	}
	failpoint("issue-after-intent")
	mreq := MintRequest{
		LeaseID:   lease.ID,
		Agent:     req.Agent,
		Task:      d.Task,
		TTL:       d.TTL,
		MaxTTL:    d.MaxTTL,
		Renewable: d.MaxTTL > d.TTL,
		Policy:    d.Rendered.Policy,
		Path:      d.Rendered.Path,
		Vars:      d.Rendered.Vars,
	}
	if n := d.Rendered.Names; n != nil {
		mreq.Names = CertNames{CommonName: n.CommonName, AltNames: n.AltNames, URISANs: n.URISANs, IPSANs: n.IPSANs}
	}

	mctx, cancel := context.WithTimeout(ctx, s.cfg.MintTimeout)
	defer cancel()
	if p, ok := backend.(Preparer); ok {
		prepared, err := p.Prepare(mctx, mreq)
		if err != nil {
			return nil, s.mintFailed(ctx, lease, req, d, err)
		}
		mreq.Prepared = prepared
		lease.Refs = prepared.Refs
		if _, err := s.apply(ctx, Change{PutIntents: []*Lease{lease}}); err != nil {
			s.revokeNow(lease)
			return nil, err
		}
	}
	failpoint("issue-before-mint")
	minted, err := backend.Mint(mctx, mreq)
	if err != nil {
		return nil, s.mintFailed(ctx, lease, req, d, err)
	}
	failpoint("issue-after-mint")

	lease.Refs = minted.Refs.Merge(lease.Refs)
	if !minted.ExpiresAt.IsZero() && minted.ExpiresAt.Before(lease.ExpiresAt) {
		lease.ExpiresAt = minted.ExpiresAt
	}
	lease.State = StateActive
	ev := s.decisionEvent(EventIssue, req, d)
	ev.Lease = lease.ID
	ev.Outcome = "issued"
	ev.Details["expires_at"] = lease.ExpiresAt.UTC().Format(time.RFC3339)
	commit := Change{
		DeleteIntents: []string{lease.ID},
		PutLeases:     []*Lease{lease},
		PutAgents:     []AgentRecord{s.touchAgent(ctx, req.Agent, req.Task, now)},
		Events:        []Event{ev},
	}
	if d.Alert && approval == nil {
		// Issued without a person seeing it, and someone should know: the
		// tier (medium by default) alerts. Written with the issue, so an
		// alert is never lost.
		alert := s.decisionEvent(EventAlert, req, d)
		alert.Subject, alert.Lease, alert.Outcome = req.Agent, lease.ID, "issued"
		if len(d.TierWhy) > 0 {
			alert.Details["tier_why"] = strings.Join(d.TierWhy, "; ")
		}
		commit.Events = append(commit.Events, alert)
	}
	if approval != nil {
		// A copy: if the commit fails, the caller's approval is still
		// approved, as the store's is.
		used := *approval
		used.Status, used.ConsumedAt, used.LeaseID = ApprovalConsumed, s.now(), lease.ID
		commit.PutApprovals = []*Approval{&used}
	}
	_, err = s.apply(ctx, commit)
	if err != nil {
		// Fail closed (invariant 5): no secret leaves without its record.
		// The intent, with refs, stays for reconciliation if this fails.
		s.revokeNow(lease)
		return nil, err
	}
	return &Issued{Lease: lease, Secret: minted.Secret}, nil
}

// mintFailed records a failed mint and queues the revocation of anything
// Prepare created.
func (s *Service) mintFailed(ctx context.Context, lease *Lease, req IssueRequest, d templates.Decision, cause error) error {
	s.log.Warn("mint failed", "lease", lease.ID, "agent", lease.Agent, "task", lease.Task, "backend", lease.Backend, "err", cause)
	lease.State = StateFailed
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
// gone, the credential must not stay.
func (s *Service) revokeNow(lease *Lease) {
	backend, ok := s.backends[lease.Backend]
	if !ok || lease.Refs.IsZero() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.MintTimeout)
	defer cancel()
	if err := backend.Revoke(ctx, lease.Refs); err != nil {
		s.log.Error("revoke an uncommitted credential; reconciliation will retry from the intent", "lease", lease.ID, "err", err)
	}
}

// touchAgent returns the agent's record with LastUsed, and the last use
// of template, set to now.
func (s *Service) touchAgent(ctx context.Context, id, template string, now time.Time) AgentRecord {
	rec, err := s.store.Agent(ctx, id)
	if err != nil {
		rec = AgentRecord{ID: id, State: s.agentState(id)}
	}
	rec.ID = id
	if rec.State == "" {
		rec.State = AgentActive
	}
	rec.LastUsed = now
	rec.Used = maps.Clone(rec.Used)
	if rec.Used == nil {
		rec.Used = map[string]time.Time{}
	}
	rec.Used[template] = now
	return rec
}
