package httpapi

import (
	"net/http"
	"slices"
	"time"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/api"
	"github.com/latchbroker/latch/templates"
)

// readsApprovals reports whether the caller may read every approval: the
// admin socket, and operators broker.ReadsApprovals lets.
func (h *Handler) readsApprovals(c *call) bool {
	if c.who.adminSocket {
		return true
	}
	var op *templates.Operator
	var ok bool
	if p := c.who.person; p != nil {
		op, ok = h.svc.Policy().Person(p.ID(), p.Subject, p.Email, p.Groups)
	} else {
		op, ok = h.svc.Policy().Operator(c.who.id)
	}
	return ok && broker.ReadsApprovals(op)
}

// approvals lists approvals, newest first, for operators.
func (h *Handler) approvals(c *call) error {
	if !h.readsApprovals(c) {
		return h.authorize(c, permRead) // refuses and audits, naming the role
	}
	q, err := query(c, "status", "agent", "limit")
	if err != nil {
		return err
	}
	f := broker.ApprovalFilter{Status: broker.ApprovalStatus(q["status"]), Agent: q["agent"]}
	if f.Status != "" && !slices.Contains(api.ApprovalStatuses, q["status"]) {
		return invalid(reasonBadQuery, "query parameter status=%q: want one of %v", truncate(q["status"], 32), api.ApprovalStatuses)
	}
	if f.Agent != "" {
		if err := agentID("agent", f.Agent); err != nil {
			return err
		}
	}
	limit, err := limitParam(q["limit"])
	if err != nil {
		return err
	}
	f.Limit = limit + 1 // one more says whether there are more
	as, err := h.svc.Approvals().List(c.r.Context(), f)
	if err != nil {
		return err
	}
	resp := api.ApprovalsResponse{Approvals: make([]api.Approval, 0, min(len(as), limit))}
	for i, a := range as {
		if i == limit {
			resp.More = true
			break
		}
		resp.Approvals = append(resp.Approvals, approvalOut(a))
	}
	return c.writeJSON(http.StatusOK, resp)
}

// approval shows one approval to an operator, or to the agent that asked
// for it (another agent's is not found). With ?wait=D it long-polls: the
// answer comes once the approval is no longer pending, or after D (at
// most api.MaxApprovalWait) as it then stands.
func (h *Handler) approval(c *call) error {
	id, err := approvalID(c)
	if err != nil {
		return err
	}
	q, err := query(c, "wait")
	if err != nil {
		return err
	}
	wait, err := waitParam(q["wait"])
	if err != nil {
		return err
	}
	ctx := c.r.Context()
	if !h.readsApprovals(c) {
		// An agent, for its own approval only; anyone else learns nothing.
		if _, err := h.svc.Approvals().ForAgent(ctx, c.who.id, id); err != nil {
			return err
		}
	}
	a, err := h.svc.Approvals().Wait(ctx, id, wait)
	if err != nil {
		return err
	}
	return c.writeJSON(http.StatusOK, api.ApprovalResponse{Approval: approvalOut(a)})
}

func (h *Handler) approve(c *call) error { return h.review(c, true) }
func (h *Handler) deny(c *call) error    { return h.review(c, false) }

// review records the caller's decision. The Service enforces the rules
// (roles, distinct approvers, never the requester, its owner or the admin
// socket) and audits the review.
func (h *Handler) review(c *call, approve bool) error {
	id, err := approvalID(c)
	if err != nil {
		return err
	}
	if _, err := query(c); err != nil {
		return err
	}
	var req api.ReviewRequest
	if err := c.decode(&req, false); err != nil {
		return err
	}
	a, err := h.svc.Approvals().Review(c.r.Context(), c.who.id, id, approve, req.Reason, c.who.adminSocket)
	if err != nil {
		return err
	}
	return c.writeJSON(http.StatusOK, api.ApprovalResponse{Approval: approvalOut(a)})
}

// approvalID returns the {id} path value, which must look like an
// approval ID (a ULID, as lease IDs are).
func approvalID(c *call) (string, error) {
	id := c.r.PathValue("id")
	if !api.ValidLeaseID(id) {
		return "", invalid(reasonBadPath, "%q is not an approval ID (26 characters of Crockford base32)", truncate(id, 64))
	}
	return id, nil
}

// waitParam parses ?wait=D (a Go duration such as 60s), capped at
// api.MaxApprovalWait; empty is no wait.
func waitParam(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, invalid(reasonBadQuery, "query parameter wait=%q: want a duration such as 60s", truncate(s, 32))
	}
	return min(d, api.MaxApprovalWait), nil
}
