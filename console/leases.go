package console

import (
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/latchbroker/latch/broker"
)

// maxLeasesShown bounds the leases page.
const maxLeasesShown = 500

// leases lists leases, live ones unless a state is asked for, filtered by
// agent and task, newest first, with a Revoke link for revokers.
func (c *Console) leases(req *request) error {
	q := req.r.URL.Query()
	f := broker.LeaseFilter{Agent: q.Get("agent"), Task: q.Get("task"), State: broker.LeaseState(q.Get("state")), LiveOnly: q.Get("state") == ""}
	list, err := c.svc.Leases().List(req.ctx, f)
	if err != nil {
		return err
	}
	slices.SortFunc(list, func(a, b *broker.Lease) int { return strings.Compare(b.ID, a.ID) })
	shown := list[:min(len(list), maxLeasesShown)]
	c.render(req.w, http.StatusOK, "leases", c.page(req, "leases", map[string]any{
		"Leases": shown, "Total": len(list), "Agent": f.Agent, "Task": f.Task, "State": q.Get("state"),
		"CanRevoke": c.may(req, broker.ActionStop), "Revoked": q.Get("revoked")}))
	return nil
}

// may reports whether the person may take action: what decides whether a
// page shows its button (the handler behind it checks again).
func (c *Console) may(req *request, action broker.Action) bool {
	return broker.AuthorizePerson(c.svc.Policy(), req.person, action, "") == nil
}

// selector reads a revoke selector from a query or a form: exactly one of
// lease, agent, task or all.
func selector(v url.Values) broker.RevokeSelector {
	return broker.RevokeSelector{Lease: v.Get("lease"), Agent: v.Get("agent"), Task: v.Get("task"), All: v.Get("all") == "1"}
}

// confirmRevoke shows what a revocation would revoke, with its count,
// and asks for a reason.
func (c *Console) confirmRevoke(req *request) error {
	if err := c.mayStop(req); err != nil {
		return err
	}
	sel := selector(req.r.URL.Query())
	list, err := c.svc.Leases().Selected(req.ctx, sel)
	if err != nil {
		return err
	}
	c.render(req.w, http.StatusOK, "revoke", c.page(req, "leases", map[string]any{"Sel": sel, "Leases": list, "Count": len(list)}))
	return nil
}

// revoke queues the revocation the confirmation showed.
func (c *Console) revoke(req *request) error {
	if err := c.mayStop(req); err != nil {
		return err
	}
	reason := strings.TrimSpace(req.r.PostFormValue("reason"))
	if reason == "" {
		return broker.Errorf(broker.EINVALID, "a revocation needs a reason")
	}
	n, err := c.svc.Leases().Revoke(req.ctx, req.person.ID(), reason, selector(req.r.PostForm))
	if err != nil {
		return err
	}
	http.Redirect(req.w, req.r, "/leases?revoked="+strconv.Itoa(n), http.StatusSeeOther)
	return nil
}

// mayStop refuses a person without the revoker role, audited.
func (c *Console) mayStop(req *request) error {
	err := broker.AuthorizePerson(c.svc.Policy(), req.person, broker.ActionStop, "revoking")
	var e *broker.Error
	if errors.As(err, &e) {
		return c.violation(req, "missing_role", e.Message)
	}
	return err
}
