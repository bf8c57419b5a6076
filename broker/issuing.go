package broker

import (
	"context"
	"errors"
	"slices"
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
	// (Approvals.Wait) and picks it up with IssueRequest.ApprovalID.
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
	templates.ReasonBackendRefused:   true, // valid-looking values that render what the backend refuses
	templates.ReasonAgentPaused:      true,
	templates.ReasonAgentQuarantined: true,
}

// Explain evaluates a request without issuing anything.
func (s *Service) Explain(req IssueRequest) templates.Decision {
	return s.policy.Load().Evaluate(s.templatesRequest(req))
}

func (s *core) templatesRequest(req IssueRequest) templates.Request {
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
// committed with its audit event in one transaction after. Both writes are
// conditional (see Conditions): an operator's pause, quarantine or freeze,
// a reload that changed the template, or a budget filled meanwhile fails
// them, and a credential already minted is then revoked, never returned.
//
// A request that needs approval is not an error: Issue records a pending
// approval and returns it in Issued.Pending. A pickup (req.ApprovalID) is
// decided again when it arrives and mints then: the approval must be this
// agent's and approved, and Task and Params those approved (both empty
// means "as approved"); TTL may be shorter than approved, never longer.
//
// Errors (*Error codes): EFORBIDDEN for a policy denial (with reasons and
// NextAllowedAt) or a denied approval, ELIMIT for a rate or a budget,
// EUNAVAILABLE when the backend or the audit log cannot be reached,
// EINTERNAL for a backend that refused; for a pickup also ENOTFOUND (no
// such approval of this agent's) and ECONFLICT (still pending, already
// used, expired, or not the request approved).
func (s *Service) Issue(ctx context.Context, req IssueRequest) (*Issued, error) {
	start := time.Now()
	res, err := s.issue(ctx, req)
	outcome, reason := requestOutcome(res, err)
	s.metrics.RequestDone(outcome, reason, time.Since(start))
	return res, err
}

// requestOutcome labels a finished request for Metrics: the outcome, and
// the first reason of a refusal (its code when it has none).
func requestOutcome(res *Issued, err error) (outcome, reason string) {
	var e *Error
	if errors.As(err, &e) && len(e.Reasons) > 0 {
		reason, _, _ = strings.Cut(e.Reasons[0], ":")
	} else if err != nil {
		reason = ErrorCode(err)
	}
	switch {
	case err == nil && res.Pending != nil && res.Replayed:
		return "pending", "replayed"
	case err == nil && res.Pending != nil:
		return "pending", "approval_required"
	case err == nil && res.Replayed:
		return "issued", "replayed"
	case err == nil:
		return "issued", ""
	case ErrorCode(err) == EFORBIDDEN:
		return "denied", reason
	case ErrorCode(err) == ELIMIT:
		return "limited", reason
	}
	return "failed", reason
}

func (s *core) issue(ctx context.Context, req IssueRequest) (*Issued, error) {
	if req.RequestID != "" {
		// Serialise retries of one request, so that two copies racing
		// each other cannot both mint.
		defer s.requestLocks.lock(req.Agent + "\x00" + req.RequestID)()
		if res, err := s.replay(ctx, req); res != nil || err != nil {
			return res, err
		}
	}
	res, err := s.decide(ctx, req)
	if e, ok := errors.AsType[*Error](err); ok && slices.Equal(e.Reasons, []string{ReasonRequestServed}) {
		return s.replay(ctx, req) // a retry through another replica delivered it first
	}
	return res, err
}

// decide picks the request up, denies it, asks for approval or issues it.
func (s *core) decide(ctx context.Context, req IssueRequest) (*Issued, error) {
	if req.ApprovalID != "" {
		return s.pickup(ctx, req)
	}
	_, span := startSpan(ctx, "latch.evaluate", attrAgent.String(req.Agent), attrTask.String(req.Task))
	d := s.policy.Load().Evaluate(s.templatesRequest(req))
	span.SetAttributes(attrOutcome.String(string(d.Outcome)))
	endSpan(span, nil)
	switch d.Outcome {
	case templates.Deny:
		// A denial spends the agent's rate too: past it, a flood of bad
		// requests is answered without an audit event each.
		if err := s.checkRate(req.Agent); err != nil {
			return nil, err
		}
		s.deny(ctx, req, d)
		return nil, deniedError(d)
	case templates.ApprovalRequired:
		return s.requestApproval(ctx, req, d)
	}
	return s.issueAllowed(ctx, req, d, nil)
}

// replay answers a retry of a request that already produced a lease (or
// an open approval) with it; nil, nil when the request is new, or when
// its earlier try never delivered a secret (the backend failed, or a
// condition withheld it): that one is decided afresh.
func (s *core) replay(ctx context.Context, req IssueRequest) (*Issued, error) {
	prev, err := s.store.LeaseByRequest(ctx, req.Agent, req.RequestID)
	switch {
	case errors.Is(err, ErrLeaseNotFound) || (err == nil && (prev.State == StateFailed || prev.Withheld)):
		if req.ApprovalID == "" {
			return s.replayApproval(ctx, req)
		}
		return nil, nil
	case err != nil:
		return nil, unavailable("the lease store", err)
	case prev.Task != req.Task && !(req.Task == "" && req.ApprovalID != ""):
		return nil, Errorf(ECONFLICT, "request_id %q was already used for task %q", req.RequestID, prev.Task)
	}
	return &Issued{Lease: prev, Replayed: true}, nil
}

// issueAllowed mints what an allowed decision (or an approved pickup, with
// its approval) grants, within the agent's limits.
func (s *core) issueAllowed(ctx context.Context, req IssueRequest, d templates.Decision, approval *Approval) (*Issued, error) {
	if err := s.checkRate(req.Agent); err != nil {
		return nil, err
	}
	backend, ok := s.backends[d.Backend]
	if !ok {
		s.log.Error("template names a backend that is not configured", "task", d.Task, "backend", d.Backend)
		return nil, Errorf(EINTERNAL, "backend %q of task %q is not configured", d.Backend, d.Task)
	}
	issued, err := s.mint(ctx, req, d, backend, approval)
	if err != nil {
		return nil, err
	}
	issued.Decision = d
	return issued, nil
}

// deny records a denial: a violation event when a reason points at
// misuse, a deny event otherwise.
func (s *core) deny(ctx context.Context, req IssueRequest, d templates.Decision) {
	typ := EventDeny
	for _, r := range d.Reasons {
		if violations[r.Code] {
			typ = EventViolation
			s.metrics.Violation(string(r.Code))
		}
	}
	if err := s.auditRefusal(ctx, s.decisionEvent(typ, req, d)); err != nil {
		// The denial stands either way; only the record is missing.
		s.log.Error("audit a denial", "agent", req.Agent, "task", req.Task, "err", err)
	}
}

func (s *core) decisionEvent(typ EventType, req IssueRequest, d templates.Decision) Event {
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

// deniedError maps a deny decision to the caller's error, with only what
// the caller may know (Decision.ForCaller).
func deniedError(d templates.Decision) *Error {
	d = d.ForCaller()
	e := &Error{Code: EFORBIDDEN, Message: "denied", Reasons: reasonCodes(d.Reasons), NextAllowedAt: d.NextAllowedAt}
	if len(d.Reasons) > 0 {
		e.Message = "denied: " + d.Reasons[0].Message
	}
	return e
}
