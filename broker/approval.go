package broker

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/latchbroker/latch/templates"
)

// ApprovalStatus is where an approval is in its life:
//
//	pending → approved → consumed   (picked up once; the lease is issued then)
//	pending → denied                (any approver denied)
//	pending → expired               (nobody decided within Config.ApprovalTTL)
//	approved → expired              (not picked up within Config.PickupTTL)
type ApprovalStatus string

const (
	ApprovalPending  ApprovalStatus = "pending"
	ApprovalApproved ApprovalStatus = "approved"
	ApprovalDenied   ApprovalStatus = "denied"
	ApprovalExpired  ApprovalStatus = "expired"
	ApprovalConsumed ApprovalStatus = "consumed"
)

// Open reports whether an approval in this status can still change:
// pending (awaiting reviews) or approved (awaiting pickup).
func (s ApprovalStatus) Open() bool { return s == ApprovalPending || s == ApprovalApproved }

// Valid reports whether s is one of the statuses above.
func (s ApprovalStatus) Valid() bool {
	switch s {
	case ApprovalPending, ApprovalApproved, ApprovalDenied, ApprovalExpired, ApprovalConsumed:
		return true
	}
	return false
}

// ReviewDecision is what one approver said.
type ReviewDecision string

const (
	ReviewApprove ReviewDecision = "approve"
	ReviewDeny    ReviewDecision = "deny"
)

// AdminSocketActor is the identity recorded for the local admin socket. It
// may deny an approval (refusing is always easy) but never approve one.
const AdminSocketActor = "admin-socket"

// MaxReviewReason bounds a review's reason, which goes into the audit log.
const MaxReviewReason = 1024

// Review is one approver's decision on an approval.
type Review struct {
	Approver string         `json:"approver"`        // operator SPIFFE ID, a person's ID (Person.ID), or AdminSocketActor for a deny
	Email    string         `json:"email,omitempty"` // a person's verified email, shown beside their ID
	Decision ReviewDecision `json:"decision"`
	Reason   string         `json:"reason"`
	At       time.Time      `json:"at"`
}

// ApprovalReason is one rule that asked for approval: the risk tier
// (tier_approval) or a require_approval freeze window (window_approval).
type ApprovalReason struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Window  string `json:"window,omitempty"`
}

// Rendered is what the backend would be asked to mint, as the template
// rendered it for this request: the Vault policy, the engine path, the
// vars and the certificate names. It is what the approver approves; it
// never holds a secret.
type Rendered struct {
	Policy     string            `json:"policy,omitempty"`
	Path       string            `json:"path,omitempty"`
	Vars       map[string]string `json:"vars,omitempty"`
	CommonName string            `json:"common_name,omitempty"`
	AltNames   []string          `json:"alt_names,omitempty"`
	URISANs    []string          `json:"uri_sans,omitempty"`
	IPSANs     []string          `json:"ip_sans,omitempty"`
}

func renderedOf(r templates.Rendered) Rendered {
	out := Rendered{Policy: r.Policy, Path: r.Path, Vars: r.Vars}
	if r.Names != nil {
		out.CommonName, out.AltNames, out.URISANs, out.IPSANs = r.Names.CommonName, r.Names.AltNames, r.Names.URISANs, r.Names.IPSANs
	}
	return out
}

// Approval is a request that needs people to agree before it is minted,
// with everything an approver needs to decide. Nothing is minted until the
// agent picks it up (IssueRequest.ApprovalID), once, after it is approved;
// the secret exists only from then on and is never stored.
type Approval struct {
	ID string `json:"id"` // ULID: sorts by creation time
	Asked
	Owner    string        `json:"owner,omitempty"` // the agent's owner when it asked
	Rendered Rendered      `json:"rendered"`
	TTL      time.Duration `json:"ttl"`
	MaxTTL   time.Duration `json:"max_ttl"`

	// Tier is the risk tier after escalation; TierWhy says how it was
	// reached; Reasons are the rules that asked for approval.
	Tier    string           `json:"tier"`
	TierWhy []string         `json:"tier_why,omitempty"`
	Reasons []ApprovalReason `json:"reasons,omitempty"`
	// Required is how many distinct approvers must approve.
	Required int      `json:"required"`
	Reviews  []Review `json:"reviews,omitempty"`

	Status    ApprovalStatus `json:"status"`
	CreatedAt time.Time      `json:"created_at"`
	// ExpiresAt is the deadline for the reviews while pending.
	ExpiresAt time.Time `json:"expires_at"`
	// DecidedAt is when it was approved, denied or expired.
	DecidedAt time.Time `json:"decided_at,omitzero"`
	// PickupBy is the deadline for the pickup once approved.
	PickupBy time.Time `json:"pickup_by,omitzero"`
	// ConsumedAt and LeaseID are set by the pickup.
	ConsumedAt time.Time `json:"consumed_at,omitzero"`
	LeaseID    string    `json:"lease_id,omitempty"`
}

// Deadline is when an open approval expires: ExpiresAt while pending,
// PickupBy once approved; zero for a closed one.
func (a *Approval) Deadline() time.Time {
	switch a.Status {
	case ApprovalPending:
		return a.ExpiresAt
	case ApprovalApproved:
		return a.PickupBy
	}
	return time.Time{}
}

// Approvers are the distinct operators who approved, in review order.
func (a *Approval) Approvers() []string {
	var out []string
	for _, r := range a.Reviews {
		if r.Decision == ReviewApprove && !slices.Contains(out, r.Approver) {
			out = append(out, r.Approver)
		}
	}
	return out
}

func (a *Approval) reviewedBy(id string) bool {
	return slices.ContainsFunc(a.Reviews, func(r Review) bool { return r.Approver == id })
}

// ApprovalFilter selects approvals; zero fields match everything.
type ApprovalFilter struct {
	Status ApprovalStatus
	Agent  string
	Limit  int // 0: no limit
}

// Match reports whether a passes the filter (Limit aside).
func (f ApprovalFilter) Match(a *Approval) bool {
	return (f.Status == "" || a.Status == f.Status) && (f.Agent == "" || a.Agent == f.Agent)
}

// replayApproval answers a retry of a request (same agent and
// request_id) that is waiting for approval, or was approved and not yet
// picked up, with that approval, so a client that lost the 202 does not
// queue a second one for the approvers. It returns nil, nil when there
// is none; a closed one (denied, expired) lets the request be asked again.
func (s *core) replayApproval(ctx context.Context, req IssueRequest) (*Issued, error) {
	prev, err := s.store.ApprovalByRequest(ctx, req.Agent, req.RequestID)
	switch {
	case errors.Is(err, ErrApprovalNotFound):
		return nil, nil
	case err != nil:
		return nil, unavailable("the approval store", err)
	case !prev.Status.Open():
		return nil, nil
	case prev.Task != req.Task:
		return nil, Errorf(ECONFLICT, "request_id %q was already used for task %q", req.RequestID, prev.Task)
	}
	return &Issued{Pending: prev, Replayed: true}, nil
}

// requestApproval records an approval_required decision as a pending
// approval: nothing is minted until it is approved and picked up.
func (s *core) requestApproval(ctx context.Context, req IssueRequest, d templates.Decision) (*Issued, error) {
	// Limits apply to the request as well as to the pickup: the rate
	// limit guards the approvers' attention, and a request over budget now
	// is refused before anyone spends time on it.
	if err := s.checkRate(req.Agent); err != nil {
		return nil, err
	}
	if err := s.checkBudgets(ctx, req.Agent, d); err != nil {
		return nil, err
	}
	now := s.now()
	a := &Approval{
		ID:        s.newLeaseID(),
		Asked:     asked(req, d),
		Owner:     d.Owner,
		Rendered:  renderedOf(d.Rendered),
		TTL:       d.TTL,
		MaxTTL:    d.MaxTTL,
		Tier:      d.Tier,
		TierWhy:   d.TierWhy,
		Required:  max(d.Approvals, 1),
		Status:    ApprovalPending,
		CreatedAt: now,
		ExpiresAt: now.Add(s.cfg.ApprovalTTL),
	}
	for _, r := range d.Reasons {
		a.Reasons = append(a.Reasons, ApprovalReason{Code: string(r.Code), Message: r.Message, Window: r.Window})
	}
	ev := s.decisionEvent(EventApprovalRequested, req, d)
	ev.Outcome = string(ApprovalPending)
	// The agent made the request (actor) and is who the approval is
	// about (subject), as in the review and expiry events that follow.
	ev.Subject = a.Agent
	ev.Details["approval_id"] = a.ID
	ev.Details["required"] = fmt.Sprint(a.Required)
	ev.Details["expires_at"] = a.ExpiresAt.UTC().Format(time.RFC3339)
	if a.Owner != "" {
		ev.Details["owner"] = a.Owner
	}
	if _, err := s.apply(ctx, Change{PutApprovals: []*Approval{a}, Events: []Event{ev}}); err != nil {
		return nil, err
	}
	return &Issued{Pending: a, Decision: d}, nil
}

// pickup issues the lease of an approved request: the approval must be
// the agent's, approved, within its pickup time and unused, and the
// request must be the one approved. The policy is evaluated again now — a
// freeze or a pause since the approval still denies — and the approval is
// marked consumed in the same store change that commits the lease.
func (s *core) pickup(ctx context.Context, req IssueRequest) (*Issued, error) {
	// Held across the mint: two pickups of one approval must not both
	// mint, and the sweeper must not expire it under a pickup.
	unlock := s.approvalLocks.lock(req.ApprovalID)
	defer unlock()
	a, err := Approvals{s}.ForAgent(ctx, req.Agent, req.ApprovalID)
	if err != nil {
		return nil, err
	}
	if err := s.usable(ctx, a); err != nil {
		return nil, err
	}
	if req.Task == "" && len(req.Params) == 0 {
		// "Pick up approval X" needs no restating of what X is.
		req.Task, req.Params = a.Task, a.Params
	}
	if req.Task != a.Task {
		return nil, s.mismatch(ctx, req, a, fmt.Sprintf("approval %s is for task %s, not %s", a.ID, a.Task, req.Task))
	}
	if req.Reason == "" {
		req.Reason = a.Reason
	}
	if req.TraceID == "" {
		req.TraceID = a.TraceID
	}
	if req.RequestID == "" {
		// A retry of the original request then replays this lease.
		req.RequestID = a.RequestID
	}
	if req.TTL <= 0 || req.TTL > a.TTL {
		req.TTL = a.TTL // shorter than approved is fine, longer is not
	}

	d := s.policy.Load().Evaluate(s.templatesRequest(req))
	if d.Outcome == templates.Deny {
		s.deny(ctx, req, d)
		return nil, deniedError(d)
	}
	switch {
	case !maps.Equal(d.Params, a.Params):
		return nil, s.mismatch(ctx, req, a, fmt.Sprintf("the parameters differ from those approved in %s", a.ID))
	case d.TemplateVersion != a.TemplateVersion || !reflect.DeepEqual(renderedOf(d.Rendered), a.Rendered):
		// The approver approved a policy that no longer is what would be
		// minted: approving it again is the only safe answer.
		return nil, Errorf(ECONFLICT, "task %s changed since approval %s was granted; request it again", a.Task, a.ID)
	case d.Outcome == templates.ApprovalRequired && len(a.Approvers()) < d.Approvals:
		return nil, &Error{Code: EFORBIDDEN, Reasons: reasonCodes(d.Reasons),
			Message: fmt.Sprintf("the request now needs %d approvals and approval %s has %d; request it again", d.Approvals, a.ID, len(a.Approvers()))}
	}
	issued, err := s.issueAllowed(ctx, req, d, a)
	if err == nil {
		s.approvalWaiters.notify(a.ID)
	}
	return issued, err
}

// usable says why an approval cannot be picked up, nil when it can. An
// approval past its deadline that the sweeper has not reached yet is
// expired here.
func (s *core) usable(ctx context.Context, a *Approval) error {
	if a.Status.Open() && s.now().After(a.Deadline()) {
		err := s.expireApproval(ctx, a)
		if changedMeanwhile(err) {
			return Errorf(ECONFLICT, "approval %s changed while this pickup read it (through another replica); ask again", a.ID)
		}
		if err != nil {
			return err
		}
	}
	switch a.Status {
	case ApprovalApproved:
		return nil
	case ApprovalPending:
		return Errorf(ECONFLICT, "approval %s is still pending (%d of %d approvals)", a.ID, len(a.Approvers()), a.Required)
	case ApprovalConsumed:
		return Errorf(ECONFLICT, "approval %s was already used (lease %s)", a.ID, a.LeaseID)
	case ApprovalDenied:
		msg := "approval " + a.ID + " was denied"
		if n := len(a.Reviews); n > 0 && a.Reviews[n-1].Decision == ReviewDeny {
			msg += ": " + a.Reviews[n-1].Reason
		}
		return &Error{Code: EFORBIDDEN, Message: msg, Reasons: []string{"approval_denied"}}
	case ApprovalExpired:
		return Errorf(ECONFLICT, "approval %s expired at %s; request it again", a.ID, a.DecidedAt.UTC().Format(time.RFC3339))
	}
	return Errorf(EINTERNAL, "approval %s has unknown status %q", a.ID, a.Status)
}

// mismatch refuses a pickup that asks for something other than what was
// approved. It is audited as a violation: an agent that tries it is
// trying to widen an approval.
func (s *core) mismatch(ctx context.Context, req IssueRequest, a *Approval, msg string) error {
	s.metrics.Violation("approval_mismatch")
	ev := Event{Type: EventViolation, Actor: req.Agent, Task: req.Task, Outcome: "refused", Reasons: []string{"approval_mismatch"},
		Details: map[string]string{"approval_id": a.ID, "message": msg}}
	if err := s.audit(ctx, ev); err != nil {
		s.log.Error("audit an approval mismatch", "agent", req.Agent, "approval", a.ID, "err", err)
	}
	return Errorf(ECONFLICT, "the request does not match the approval: %s", msg)
}

// Review records one approver's decision on a pending approval and
// returns the approval as it now stands. Any deny denies it; approvals are
// counted by distinct approvers, and Required of them approve it.
//
// approver is the caller's verified SPIFFE ID; viaAdminSocket says the
// caller is the local admin socket, which may deny but never approve.
//
// Errors: EINVALID without a reason (or one longer than MaxReviewReason);
// EFORBIDDEN when the caller is not an operator with the approver or admin
// role, or would approve as the requesting agent, the agent's owner or the
// admin socket (these are audited as violations); ENOTFOUND; ECONFLICT when
// the approval is no longer pending or the caller has already reviewed it;
// EUNAVAILABLE.
func (s Approvals) Review(ctx context.Context, approver, approvalID string, approve bool, reason string, viaAdminSocket bool) (*Approval, error) {
	reason = strings.TrimSpace(reason)
	switch {
	case reason == "":
		return nil, Errorf(EINVALID, "a review needs a reason")
	case len(reason) > MaxReviewReason:
		return nil, Errorf(EINVALID, "the reason is %d bytes, more than %d", len(reason), MaxReviewReason)
	}
	// The identity string alone also counts: "admin-socket" is never a
	// person, however the caller arrived.
	if viaAdminSocket {
		approver = AdminSocketActor
	}
	action := ActionDeny
	if approve {
		action = ActionApprove
	}
	if err := authorizeIn(ctx, s.core, approver, action, "a review"); err != nil {
		return nil, s.refuse(ctx, Event{Actor: approver}, err.(*Error))
	}

	unlock := s.approvalLocks.lock(approvalID)
	defer unlock()
	for attempt := 1; ; attempt++ {
		a, err := s.reviewOnce(ctx, approver, approvalID, approve, reason)
		if !changedMeanwhile(err) {
			return a, err
		}
		if attempt == reviewRetries {
			return nil, Errorf(ECONFLICT, "approval %s kept changing while it was reviewed (reviews through other replicas); review it again", approvalID)
		}
	}
}

// reviewRetries bounds the tries of a review whose approval another
// replica changed between its read and its commit.
const reviewRetries = 5

// changedMeanwhile reports whether err is an approval_changed condition.
func changedMeanwhile(err error) bool {
	var failed *ConditionFailed
	return errors.As(err, &failed) && failed.Reason == ReasonApprovalChanged
}

// reviewOnce reads the approval and commits the review on it, if it is
// still as read; the caller holds its lock.
func (s Approvals) reviewOnce(ctx context.Context, approver, approvalID string, approve bool, reason string) (*Approval, error) {
	a, err := s.Get(ctx, approvalID)
	if err != nil {
		return nil, err
	}
	if a.Status == ApprovalPending && s.now().After(a.ExpiresAt) {
		if err := s.expireApproval(ctx, a); err != nil {
			return nil, err
		}
	}
	// The owner when the agent asked, and the owner now: a config reload
	// in between must not open a way around the rule.
	owner := ""
	if entry, ok := s.policy.Load().Agent(a.Agent); ok {
		owner = entry.Owner
	}
	review := Review{Approver: approver, Decision: ReviewDeny, Reason: reason, At: s.now()}
	if p := personFrom(ctx, approver); p != nil {
		review.Email = p.Email
	}
	if approve {
		review.Decision = ReviewApprove
	}
	next, ev, err := ApplyReview(a, review, owner, s.cfg.PickupTTL)
	var refused *Error
	if errors.As(err, &refused) && refused.Code == EFORBIDDEN {
		return nil, s.refuseReview(ctx, approver, a, refused.Reasons[0], refused.Message)
	}
	if err != nil {
		return nil, err
	}
	if _, err := s.apply(ctx, Change{PutApprovals: []*Approval{next}, Events: []Event{ev}, Conditions: &Conditions{Approval: a.Version()}}); err != nil {
		return nil, err
	}
	s.approvalWaiters.notify(next.ID)
	return next, nil
}

// ApplyReview is one review as a pure state transition: it returns the
// approval as the review leaves it (a is not changed) and the event that
// says what happened, or why the review is refused. Nothing is read or
// written; the caller commits both. owner is the agent's owner now (the
// owner when it asked is in a); pickupTTL is how long an approved request
// waits for its pickup.
//
// Errors: ECONFLICT when a is not pending or the approver has reviewed it
// already; EFORBIDDEN, with reason self_approval or owner_approval, when
// the approver is the agent or its owner.
func ApplyReview(a *Approval, r Review, owner string, pickupTTL time.Duration) (*Approval, Event, error) {
	switch {
	case a.Status != ApprovalPending:
		return nil, Event{}, Errorf(ECONFLICT, "approval %s is %s; only a pending approval can be reviewed", a.ID, a.Status)
	case r.Decision == ReviewApprove && r.Approver == a.Agent:
		return nil, Event{}, forbidden("self_approval", "an agent can never approve its own request")
	case r.Decision == ReviewApprove && (r.Approver == a.Owner || r.Approver == owner || r.ownsBy(a.Owner) || r.ownsBy(owner)):
		return nil, Event{}, forbidden("owner_approval", fmt.Sprintf("%s owns agent %s and can never approve its requests", r.Approver, a.Agent))
	case a.reviewedBy(r.Approver):
		return nil, Event{}, Errorf(ECONFLICT, "%s has already reviewed approval %s", r.Approver, a.ID)
	}
	next := *a
	next.Reviews = append(slices.Clone(a.Reviews), r)
	typ := EventApprovalReview
	switch {
	case r.Decision == ReviewDeny:
		next.Status, next.DecidedAt, typ = ApprovalDenied, r.At, EventApprovalDenied
	case len(next.Approvers()) >= next.Required:
		next.Status, next.DecidedAt, next.PickupBy, typ = ApprovalApproved, r.At, r.At.Add(pickupTTL), EventApprovalApproved
	}
	ev := Event{Type: typ, Actor: r.Approver, Subject: a.Agent, Task: a.Task, Outcome: string(r.Decision), Details: map[string]string{
		"approval_id": a.ID,
		"reason":      r.Reason,
		"status":      string(next.Status),
		"approvals":   fmt.Sprintf("%d/%d", len(next.Approvers()), next.Required),
	}}
	if r.Email != "" {
		ev.Details["actor_email"] = r.Email
	}
	if a.TraceID != "" {
		ev.Details["trace_id"] = a.TraceID
	}
	if next.Status == ApprovalApproved {
		ev.Details["pickup_by"] = next.PickupBy.UTC().Format(time.RFC3339)
	}
	return &next, ev, nil
}

// ownsBy reports whether owner names the reviewer by their verified
// email: an agent's owner may be a person's email.
func (r Review) ownsBy(owner string) bool {
	return r.Email != "" && strings.EqualFold(r.Email, owner)
}

// refuseReview audits a review that the rules forbid, as a violation, and
// returns the caller's error naming why.
func (s *core) refuseReview(ctx context.Context, actor string, a *Approval, code, msg string) error {
	ev := Event{Actor: actor, Details: map[string]string{}}
	if a != nil {
		ev.Subject, ev.Task, ev.Details["approval_id"] = a.Agent, a.Task, a.ID
	}
	return s.refuse(ctx, ev, forbidden(code, msg))
}

// refuse audits an operator's action that the rules forbid as a
// violation (ev gives who and what about) and returns e. A reason such as
// missing_role:admin is audited and counted as missing_role, as the HTTP
// API audits it.
func (s *core) refuse(ctx context.Context, ev Event, e *Error) error {
	code, _, _ := strings.Cut(e.Reasons[0], ":")
	s.metrics.Violation(code)
	ev.Type, ev.Outcome, ev.Reasons = EventViolation, "refused", []string{code}
	if ev.Details == nil {
		ev.Details = map[string]string{}
	}
	ev.Details["message"] = e.Message
	if err := s.audit(ctx, ev); err != nil {
		s.log.Error("audit a refused action", "actor", ev.Actor, "err", err)
	}
	return e
}

// Approval returns one approval. Errors: ENOTFOUND, EUNAVAILABLE.
func (s Approvals) Get(ctx context.Context, id string) (*Approval, error) {
	a, err := s.store.Approval(ctx, id)
	return storedRecord(a, err, ErrApprovalNotFound, "no approval "+id)
}

// ForAgent returns one of the agent's own approvals, for the agent
// that asked. Errors: ENOTFOUND when it does not exist or is another
// agent's (the two are not told apart), EUNAVAILABLE.
func (s Approvals) ForAgent(ctx context.Context, agent, id string) (*Approval, error) {
	a, err := s.Get(ctx, id)
	if err == nil && a.Agent != agent {
		return nil, Errorf(ENOTFOUND, "no approval %s of yours", id)
	}
	return a, err
}

// Approvals lists the approvals f matches, newest first. Errors:
// EUNAVAILABLE.
func (s Approvals) List(ctx context.Context, f ApprovalFilter) ([]*Approval, error) {
	return stored(s.store.Approvals(ctx, f))
}

// Wait returns the approval once it is no longer pending, or as it
// stands when maxWait has passed (at once when maxWait ≤ 0): the server
// side of a long poll. It does not check whose approval it is; an agent's
// caller checks with ForAgent first. Errors: ENOTFOUND, EUNAVAILABLE,
// ctx.Err() when ctx ends first.
func (s Approvals) Wait(ctx context.Context, id string, maxWait time.Duration) (*Approval, error) {
	timer := time.NewTimer(max(maxWait, 0))
	defer timer.Stop()
	for {
		// Registered before the read, so a change between the read and
		// the wait still wakes us.
		changed, release := s.approvalWaiters.add(id)
		a, err := s.Get(ctx, id)
		if err != nil || a.Status != ApprovalPending {
			release()
			return a, err
		}
		select {
		case <-changed:
		case <-timer.C:
			release()
			return a, nil
		case <-ctx.Done():
			release()
			return nil, ctx.Err()
		}
	}
}

// Expire expires every open approval past its deadline: pending
// ones past ExpiresAt, approved ones not picked up by PickupBy. Each gets
// an approval_expired event. Sweep calls it; it returns how many expired.
func (s Approvals) Expire(ctx context.Context) (int, error) {
	total := 0
	for {
		due, err := s.store.ExpiringApprovals(ctx, s.now(), revokeBatch)
		if err != nil || len(due) == 0 {
			return total, err
		}
		n := 0
		for _, a := range due {
			ok, err := s.expireDue(ctx, a.ID)
			if err != nil {
				return total, err
			}
			if ok {
				n++
			}
		}
		total += n
		// n == 0: every one was decided meanwhile; the next listing would
		// be the same.
		if len(due) < revokeBatch || n == 0 {
			return total, nil
		}
	}
}

// expireDue expires one approval, under its lock, if it is still open and
// past its deadline: a review or a pickup may have got there first.
func (s *core) expireDue(ctx context.Context, id string) (bool, error) {
	unlock := s.approvalLocks.lock(id)
	defer unlock()
	a, err := Approvals{s}.Get(ctx, id)
	if ErrorCode(err) == ENOTFOUND {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if !a.Status.Open() || !s.now().After(a.Deadline()) {
		return false, nil
	}
	err = s.expireApproval(ctx, a)
	if changedMeanwhile(err) {
		return false, nil // reviewed or picked up through another replica: the next sweep looks again
	}
	return err == nil, err
}

// expireApproval moves an open approval to expired and records it; the
// caller holds its lock. a is updated in place.
func (s *core) expireApproval(ctx context.Context, a *Approval) error {
	was, deadline := a.Status, a.Deadline()
	next := *a
	next.Status, next.DecidedAt = ApprovalExpired, s.now()
	ev := Event{Type: EventApprovalExpired, Actor: "latch", Subject: a.Agent, Task: a.Task, Outcome: string(ApprovalExpired),
		Details: map[string]string{"approval_id": a.ID, "was": string(was), "deadline": deadline.UTC().Format(time.RFC3339)}}
	if a.TraceID != "" {
		ev.Details["trace_id"] = a.TraceID
	}
	if _, err := s.apply(ctx, Change{PutApprovals: []*Approval{&next}, Events: []Event{ev}, Conditions: &Conditions{Approval: a.Version()}}); err != nil {
		return err
	}
	*a = next
	s.approvalWaiters.notify(a.ID)
	return nil
}

// keyedLocks is a mutex per key, held only while in use.
type keyedLocks struct {
	mu sync.Mutex
	m  map[string]*keyedLock
}

type keyedLock struct {
	mu    sync.Mutex
	users int
}

// lock locks key and returns its unlock.
func (k *keyedLocks) lock(key string) func() {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*keyedLock{}
	}
	l := k.m[key]
	if l == nil {
		l = &keyedLock{}
		k.m[key] = l
	}
	l.users++
	k.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		k.mu.Lock()
		// Dropped only when nobody waits on it, so two holders never get
		// two different mutexes for one key.
		if l.users--; l.users == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
}

// approvalWaiters wakes the long polls of one approval when it changes.
type approvalWaiters struct {
	mu sync.Mutex
	m  map[string]*waitEntry
}

type waitEntry struct {
	ch    chan struct{}
	users int
}

// add returns a channel that is closed at the next notify of id, and a
// release for a waiter that stops waiting without one.
func (w *approvalWaiters) add(id string) (<-chan struct{}, func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.m == nil {
		w.m = map[string]*waitEntry{}
	}
	e := w.m[id]
	if e == nil {
		e = &waitEntry{ch: make(chan struct{})}
		w.m[id] = e
	}
	e.users++
	return e.ch, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		if e.users--; e.users == 0 && w.m[id] == e {
			delete(w.m, id)
		}
	}
}

func (w *approvalWaiters) notify(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if e := w.m[id]; e != nil {
		close(e.ch)
		delete(w.m, id)
	}
}

// Count counts the approvals in status.
func (s Approvals) Count(ctx context.Context, status ApprovalStatus) (int, error) {
	return stored(s.store.CountApprovals(ctx, status))
}
