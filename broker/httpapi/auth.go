package httpapi

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/latchbroker/latch/attest"
	"github.com/latchbroker/latch/broker"
)

// caller is a request's verified identity.
type caller struct {
	id          string // SPIFFE ID, a person's ID, or AdminSocketActor
	adminSocket bool
	person      *broker.Person // a person signed in with latch login
}

// identify sets c.who from the admin socket or the request's credential.
// A refused credential is a violation: audited (within RefusalAuditRate)
// and answered with 401 naming the refusal's kind. A caller that has spent
// its refusals (refusalBudget) gets 429 instead, with nothing audited.
func (h *Handler) identify(c *call) error {
	if h.admin {
		c.who = caller{id: AdminSocketActor, adminSocket: true}
		return nil
	}
	who, err := h.verify(c.r)
	if err == nil {
		c.who = who
		if who.person != nil {
			// The Service's own guards read the person's roles from it.
			c.r = c.r.WithContext(broker.WithPerson(c.r.Context(), who.person))
		}
		return h.overBudgetAt(c, h.budget.exhausted(c.who.id, h.now()))
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
	if lerr := h.budget.exhausted(callerKey(c), h.now()); lerr != nil {
		return h.overBudgetAt(c, lerr)
	}
	h.refuseUnidentified(c.r.Context(), broker.Refusal{Endpoint: c.route, Reason: string(ae.Kind), Message: ae.Message, Remote: c.r.RemoteAddr})
	return err
}

// verify is the request's verified identity: a person by their latch
// session on the console's listener (People), else a SPIFFE ID.
func (h *Handler) verify(r *http.Request) (caller, error) {
	if h.people != nil {
		p, err := h.people.Person(r)
		if err != nil {
			return caller{}, err
		}
		return caller{id: p.ID(), person: p}, nil
	}
	id, err := h.verifier.Identify(r)
	if err != nil {
		return caller{}, err
	}
	return caller{id: id.ID.String()}, nil
}

// overBudgetAt counts a refusal for a spent budget (err, when not nil)
// and logs a line a second with the count since the last, so that a flood
// writes a line a second, not one per request. It counts here, as the
// request is refused, not once it is answered: a caller's next request
// cannot be counted before this one.
func (h *Handler) overBudgetAt(c *call, err error) error {
	if err == nil {
		return nil
	}
	if n := h.overBudget.add(h.now()); n > 0 {
		h.log.Info("requests refused: callers over their refusal budget", "request_id", c.requestID, "route", c.route,
			"caller", c.who.id, "remote", c.r.RemoteAddr, "count", n)
	}
	return err
}

// refuseUnidentified audits a refusal of a caller without a verified
// identity, unless they come faster than RefusalAuditRate: then it is
// only counted, and logged once a second.
func (h *Handler) refuseUnidentified(ctx context.Context, r broker.Refusal) {
	if h.refusals.Allow() {
		if err := h.svc.Audit().Violation(ctx, r); err != nil {
			h.log.Error("audit a refused credential", "err", err)
		}
		return
	}
	h.metrics.Violation(r.Reason)
	if n := h.unaudited.add(h.now()); n > 0 {
		h.log.Warn("refused credentials arrive faster than the audit rate allows; not audited, only counted",
			"not_audited", n, "last_reason", r.Reason, "last_remote", r.Remote)
	}
}

// authorize checks that the caller may use a route of permission p
// (broker.Authorize says who may do what). A refusal for a missing role is
// audited as a violation.
func (h *Handler) authorize(c *call, p perm) error {
	var err error
	if c.who.person != nil {
		err = broker.AuthorizePerson(h.svc.Policy(), c.who.person, p, c.route)
	} else {
		err = broker.Authorize(h.svc.Policy(), c.who.id, p, c.route)
	}
	var e *broker.Error
	if err == nil || !errors.As(err, &e) || len(e.Reasons) == 0 || !strings.HasPrefix(e.Reasons[0], "missing_role") {
		return err
	}
	if aerr := h.svc.Audit().Violation(c.r.Context(), broker.Refusal{Actor: c.who.id, Endpoint: c.route, Reason: "missing_role",
		Message: e.Message, Remote: c.r.RemoteAddr}); aerr != nil {
		h.log.Error("audit a refused operator call", "request_id", c.requestID, "err", aerr)
	}
	return err
}
