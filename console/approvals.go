package console

import (
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/api"
	"github.com/latchbroker/latch/templates"
)

// approvals is the queue: every pending request, oldest first.
func (c *Console) approvals(req *request) error {
	list, err := c.svc.Approvals().List(req.ctx, broker.ApprovalFilter{Status: broker.ApprovalPending})
	if err != nil {
		return err
	}
	slices.SortFunc(list, func(a, b *broker.Approval) int { return strings.Compare(a.ID, b.ID) })
	c.render(req.w, http.StatusOK, "approvals", c.page(req, "approvals", map[string]any{"Approvals": list}))
	return nil
}

// approvalView is one approval as its page shows it.
type approvalView struct {
	*broker.Approval
	Description string
	Needed      int // approvals still needed
	CanApprove  bool
	CanDeny     bool
	WhyNot      string // why this person has no Approve button
	StepUp      bool   // approving needs a fresh sign-in first
	// Now is the request evaluated again as the policy stands: its
	// rule-by-rule trace, and whether the template changed since.
	Now             templates.Decision
	TemplateChanged bool
	TraceLink       string // the agent's trace, when telemetry.trace_url is set
}

// approval is one request with everything an approver needs, and the
// Approve and Deny buttons this person may use.
func (c *Console) approval(req *request) error {
	a, err := c.svc.Approvals().Get(req.ctx, req.r.PathValue("id"))
	if err != nil {
		return err
	}
	v := c.view(req, a)
	c.render(req.w, http.StatusOK, "approval", c.page(req, "approvals", map[string]any{"A": v, "Done": req.r.URL.Query().Get("done")}))
	return nil
}

func (c *Console) view(req *request, a *broker.Approval) approvalView {
	p := c.svc.Policy()
	v := approvalView{Approval: a, Needed: max(0, a.Required-len(a.Approvers()))}
	v.Now = c.svc.Explain(broker.IssueRequest{Agent: a.Agent, Task: a.Task, Params: a.Params, TTL: a.TTL})
	v.TemplateChanged = v.Now.TemplateVersion != "" && v.Now.TemplateVersion != a.TemplateVersion
	v.TraceLink = api.TraceLink(c.cfg.TraceURL, a.TraceID)
	if t, ok := p.Template(a.Task); ok {
		v.Description = t.Description
	}
	pending := a.Status == broker.ApprovalPending
	reviewed := slices.ContainsFunc(a.Reviews, func(r broker.Review) bool { return r.Approver == req.person.ID() })
	owner := a.Owner
	if entry, ok := p.Agent(a.Agent); ok {
		owner = entry.Owner
	}
	mayApprove := c.may(req, broker.ActionApprove)
	switch {
	case !pending:
		v.WhyNot = "this request is " + string(a.Status)
	case reviewed:
		v.WhyNot = "you have reviewed this request"
	case !mayApprove:
		v.WhyNot = "your roles do not include approver"
	case ownedBy(req.s, a.Owner) || ownedBy(req.s, owner):
		v.WhyNot = "you own agent " + a.Agent + ": an owner never approves their agent's requests"
	default:
		v.CanApprove = true
		v.StepUp = a.Tier == "critical" && c.stale(req.s)
	}
	v.CanDeny = pending && !reviewed && c.may(req, broker.ActionDeny)
	return v
}

// ownedBy reports whether owner (an agent's owner: a SPIFFE ID or an
// email) names the signed-in person.
func ownedBy(s *session, owner string) bool {
	return owner != "" && (owner == s.Issuer+"#"+s.Subject || (s.Email != "" && strings.EqualFold(owner, s.Email)))
}

// stale reports whether the session's authentication is older than the
// step-up age that approving a critical request allows.
func (c *Console) stale(s *session) bool {
	return c.now().Sub(time.Unix(s.AuthTime, 0)) > c.cfg.StepUpAge
}

// review approves or denies, with the reason the form requires. The
// broker decides (roles, owner, quorum, a second review by the same
// person); a critical approval with a stale authentication goes back to
// the provider first, and the person approves again on their return.
func (c *Console) review(req *request) error {
	id := req.r.PathValue("id")
	approve := req.r.PostFormValue("decision") == "approve"
	if approve {
		a, err := c.svc.Approvals().Get(req.ctx, id)
		if err != nil {
			return err
		}
		if a.Tier == "critical" && c.stale(req.s) {
			c.toSignIn(req.w, req.r, "/approvals/"+url.PathEscape(id), true)
			return nil
		}
	}
	if _, err := c.svc.Approvals().Review(req.ctx, req.person.ID(), id, approve, req.r.PostFormValue("reason"), false); err != nil {
		return err
	}
	done := "denied"
	if approve {
		done = "approved"
	}
	http.Redirect(req.w, req.r, "/approvals/"+url.PathEscape(id)+"?done="+done, http.StatusSeeOther)
	return nil
}

// page is the data every page gets: who is signed in, the CSRF token of
// its forms, and which page is current.
func (c *Console) page(req *request, current string, data map[string]any) map[string]any {
	data["Who"] = display(req.s)
	data["PersonID"] = req.person.ID()
	data["CSRF"] = req.s.CSRF
	data["Current"] = current
	return data
}
