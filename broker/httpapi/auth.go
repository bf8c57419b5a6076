package httpapi

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/latchbroker/latch/attest"
	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/templates"
)

// caller is a request's verified identity.
type caller struct {
	id          string // SPIFFE ID, or AdminSocketActor
	adminSocket bool
}

// identify sets c.who from the admin socket or the request's credential.
// A refused credential is a violation: audited (within RefusalAuditRate)
// and answered with 401 naming the refusal's kind.
func (h *Handler) identify(c *call) error {
	if h.admin {
		c.who = caller{id: AdminSocketActor, adminSocket: true}
		return nil
	}
	id, err := h.verifier.Identify(c.r)
	if err == nil {
		c.who = caller{id: id.ID.String()}
		return nil
	}
	var ae *attest.Error
	if !errors.As(err, &ae) {
		return &broker.Error{Code: broker.EINTERNAL, Message: "cannot verify the credential", Err: err}
	}
	if ae.Kind == attest.KindUnavailable {
		// latch cannot judge right now: not the caller's fault.
		h.log.Warn("cannot verify a credential", "request_id", c.requestID, "err", err)
		return err
	}
	h.refuseUnidentified(c.r.Context(), broker.Refusal{Endpoint: c.route, Reason: string(ae.Kind), Message: ae.Message, Remote: c.r.RemoteAddr})
	return err
}

// refuseUnidentified audits a refusal of a caller without a verified
// identity, unless they come faster than RefusalAuditRate: then it is
// only counted, and logged once a second.
func (h *Handler) refuseUnidentified(ctx context.Context, r broker.Refusal) {
	if h.refusals.Allow() {
		if err := h.svc.Violation(ctx, r); err != nil {
			h.log.Error("audit a refused credential", "err", err)
		}
		return
	}
	h.metrics.Violation(r.Reason)
	n := h.suppressed.Add(1)
	now := time.Now().UnixNano()
	last := h.lastNote.Load()
	if now-last >= int64(time.Second) && h.lastNote.CompareAndSwap(last, now) {
		h.suppressed.Add(-n)
		h.log.Warn("refused credentials arrive faster than the audit rate allows; not audited, only counted",
			"not_audited", n, "last_reason", r.Reason, "last_remote", r.Remote)
	}
}

// authorize checks that the caller may use a route of permission p. Agent
// routes are open to every verified identity except the admin socket (the
// Service then decides who is an agent and what it may do, and only for
// itself). Operator routes need a role: viewer to read, revoker to act,
// approver to approve; admin holds them all. The admin socket may read
// and act, never approve. Anything else is denied, naming the missing
// role, and audited as a violation.
func (h *Handler) authorize(c *call, p perm) error {
	var role templates.Role
	switch p {
	case permAgent:
		if c.who.adminSocket {
			return broker.Errorf(broker.EFORBIDDEN, "the admin socket is for operators: agents call %s with their SVID", c.route)
		}
		return nil
	case permRead:
		role = templates.RoleViewer
	case permAct:
		role = templates.RoleRevoker
	case permApprove:
		if c.who.adminSocket {
			return broker.Errorf(broker.EFORBIDDEN, "the admin socket may never approve: an approval must be attributable to a person")
		}
		role = templates.RoleApprover
	case permDeny:
		role = templates.RoleApprover
	case permIdentified:
		return nil
	default:
		return broker.Errorf(broker.EFORBIDDEN, "%s is not open to anyone", c.route)
	}
	if c.who.adminSocket {
		return nil
	}
	op, isOperator := h.svc.Policy().Operator(c.who.id)
	if isOperator && (op.Has(role) || op.Has(templates.RoleAdmin)) {
		return nil
	}
	var msg string
	if !isOperator {
		msg = fmt.Sprintf("%s is not an operator: %s needs the %s role", c.who.id, c.route, role)
	} else {
		roles := make([]string, len(op.Roles))
		for i, r := range op.Roles {
			roles[i] = string(r)
		}
		msg = fmt.Sprintf("%s lacks the %s role that %s needs (it has: %s)", c.who.id, role, c.route, strings.Join(roles, ", "))
	}
	reason := "missing_role:" + string(role)
	if err := h.svc.Violation(c.r.Context(), broker.Refusal{Actor: c.who.id, Endpoint: c.route, Reason: "missing_role",
		Message: msg, Remote: c.r.RemoteAddr}); err != nil {
		h.log.Error("audit a refused operator call", "request_id", c.requestID, "err", err)
	}
	return &broker.Error{Code: broker.EFORBIDDEN, Message: msg, Reasons: []string{reason}}
}
