package console

import (
	"context"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/api"
)

// agents lists the agents latch holds a record of, with Pause and
// Quarantine for revokers and Resume for admins.
func (c *Console) agents(req *request) error {
	list, err := c.svc.Agents().List(req.ctx)
	if err != nil {
		return err
	}
	slices.SortFunc(list, func(a, b broker.AgentRecord) int { return strings.Compare(a.ID, b.ID) })
	c.render(req.w, http.StatusOK, "agents", c.page(req, "agents", map[string]any{"Agents": list,
		"CanStop": c.may(req, broker.ActionStop), "CanResume": c.may(req, broker.ActionReopen), "Done": req.r.URL.Query().Get("done")}))
	return nil
}

// setAgentState pauses, quarantines or resumes an agent, with a reason.
// The broker refuses a resume to anyone but an admin; the console
// refuses a stop to anyone but a revoker, audited.
func (c *Console) setAgentState(req *request) error {
	agent := req.r.PostFormValue("agent")
	if err := api.SPIFFEID("agent", agent); err != nil {
		return broker.Errorf(broker.EINVALID, "%v", err)
	}
	if _, err := spiffeid.FromString(agent); err != nil {
		return broker.Errorf(broker.EINVALID, "agent %q is not a SPIFFE ID: %v", clip(agent, 64), err)
	}
	state := broker.AgentState(req.r.PostFormValue("state"))
	reason := strings.TrimSpace(req.r.PostFormValue("reason"))
	switch {
	case reason == "":
		return broker.Errorf(broker.EINVALID, "changing an agent's state needs a reason")
	case state == broker.AgentPaused || state == broker.AgentQuarantined:
		if err := c.mayStop(req); err != nil {
			return err
		}
	case state != broker.AgentActive:
		return broker.Errorf(broker.EINVALID, "unknown agent state %q", clip(string(state), 20))
	}
	if err := c.svc.Agents().SetState(req.ctx, req.person.ID(), agent, state, reason); err != nil {
		return err
	}
	http.Redirect(req.w, req.r, "/agents?done="+url.QueryEscape(string(state)), http.StatusSeeOther)
	return nil
}

// report is the inventory of grants, or with unused=DURATION only the
// grants idle at least that long.
func (c *Console) report(req *request) error {
	inv, err := c.svc.Report(req.ctx)
	if err != nil {
		return err
	}
	grants, unused := inv.Grants, req.r.URL.Query().Get("unused")
	if unused != "" {
		d, err := parseDays(unused)
		if err != nil {
			return err
		}
		grants = inv.Unused(d)
	}
	c.render(req.w, http.StatusOK, "report", c.page(req, "report", map[string]any{"Grants": grants, "At": inv.At, "Unused": unused}))
	return nil
}

// parseDays reads 30d, 12h or 90m.
func parseDays(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if n, ok := strings.CutSuffix(s, "d"); ok {
		d, err = time.ParseDuration(n + "h")
		d *= 24
	}
	if err != nil || d < 0 {
		return 0, broker.Errorf(broker.EINVALID, "unused=%q: want a duration such as 30d or 12h", clip(s, 20))
	}
	return d, nil
}

// auditWindow is how many of the newest events the audit page checks.
const auditWindow = 1000

// auditView is what the audit page shows: the newest events, whether
// the newest auditWindow of them hash and link up, and the last signed
// checkpoint among them. The whole chain is `latch audit verify`'s.
type auditView struct {
	Events     []broker.Event // newest first, at most 100
	From, To   uint64         // the checked range
	BrokenAt   uint64         // the first record that does not verify; 0: none
	Checkpoint *broker.Event
}

func (c *Console) audit(req *request) error {
	v, err := c.checkAudit(req.ctx)
	if err != nil {
		return err
	}
	c.render(req.w, http.StatusOK, "audit", c.page(req, "audit", map[string]any{"V": v}))
	return nil
}

func (c *Console) checkAudit(ctx context.Context) (*auditView, error) {
	last, err := c.svc.Audit().LastSeq(ctx)
	if err != nil {
		return nil, err
	}
	v := &auditView{From: last - min(last, auditWindow) + 1, To: last}
	var prev *broker.Event
	err = c.svc.Audit().Events(ctx, v.From-1, func(e broker.Event) (bool, error) {
		if v.BrokenAt == 0 && (e.ComputeHash() != e.Hash || (prev != nil && (e.PrevHash != prev.Hash || e.Seq != prev.Seq+1))) {
			v.BrokenAt = e.Seq
		}
		if e.Type == broker.EventCheckpoint {
			v.Checkpoint = &e
		}
		prev = &e
		v.Events = append(v.Events, e)
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	slices.Reverse(v.Events)
	v.Events = v.Events[:min(len(v.Events), 100)]
	return v, nil
}
