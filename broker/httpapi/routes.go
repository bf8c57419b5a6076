package httpapi

import (
	"context"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.opentelemetry.io/otel/propagation"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/api"
	"github.com/latchbroker/latch/templates"
)

// Route is one route of the API and what it requires of its caller: the
// table the server enforces, and the one README's roles table is checked
// against.
type Route struct {
	Pattern string        // as http.ServeMux reads it: "GET /v1/leases"
	Needs   broker.Action // what broker.Authorize decides on; "" for none
	serve   func(*Handler, *call) error
}

// Routes is the route table. Resuming an agent and ending a freeze are
// stops at the route; the Service then asks for ActionReopen. The
// approvals routes are open to any identity: an agent reads its own,
// operators who broker.ReadsApprovals read all (approvals.go).
var Routes = []Route{
	{"GET /healthz", permNone, (*Handler).healthz},
	{"GET /readyz", permNone, (*Handler).readyz},

	// Agents.
	{"POST /v1/credentials", permAgent, (*Handler).credentials},
	{"POST /v1/explain", permAgent, (*Handler).explain},
	{"GET /v1/tasks", permAgent, (*Handler).tasks},
	{"POST /v1/tool-calls", permAgent, (*Handler).toolCall},
	{"POST /v1/leases/{id}/renew", permAgent, (*Handler).renew},
	{"DELETE /v1/leases/{id}", permAgent, (*Handler).release},

	// Operators.
	{"GET /v1/leases", permRead, (*Handler).leases},
	{"GET /v1/leases/{id}", permRead, (*Handler).lease},
	{"POST /v1/revoke", permAct, (*Handler).revoke},
	{"GET /v1/agents", permRead, (*Handler).agents},
	{"POST /v1/agents/{id}/{action}", permAct, (*Handler).agentAction},
	{"POST /v1/freeze", permAct, (*Handler).freeze},
	{"GET /v1/audit", permRead, (*Handler).audit},
	{"GET /v1/events", permRead, (*Handler).events},
	{"GET /v1/report", permRead, (*Handler).report},

	// Approvals (approvals.go).
	{"GET /v1/whoami", permIdentified, (*Handler).whoami},
	{"GET /v1/approvals", permIdentified, (*Handler).approvals},
	{"GET /v1/approvals/{id}", permIdentified, (*Handler).approval},
	{"POST /v1/approvals/{id}/approve", permApprove, (*Handler).approve},
	{"POST /v1/approvals/{id}/deny", permDeny, (*Handler).deny},
}

func (h *Handler) routes() {
	for _, r := range Routes {
		h.handle(r.Pattern, r.Needs, func(c *call) error { return r.serve(h, c) })
	}
}

// whoami says who latch takes the caller for, and the operator roles
// that identity holds now.
func (h *Handler) whoami(c *call) error {
	if _, err := query(c); err != nil {
		return err
	}
	out := api.WhoAmI{ID: c.who.id, Kind: api.KindSPIFFE}
	p := h.svc.Policy()
	op, ok := p.Operator(c.who.id)
	switch {
	case c.who.adminSocket:
		out.Kind = api.KindAdminSocket
	case c.who.person != nil:
		out.Kind, out.Email = api.KindPerson, c.who.person.Email
		op, ok = p.Person(c.who.id, c.who.person.Subject, c.who.person.Email, c.who.person.Groups)
	}
	if ok {
		for _, r := range op.Roles {
			out.Roles = append(out.Roles, string(r))
		}
	}
	if _, isAgent := p.Agent(c.who.id); isAgent && c.who.person == nil {
		out.Agent = true
	}
	return c.writeJSON(http.StatusOK, out)
}

func (h *Handler) healthz(c *call) error {
	return c.writeJSON(http.StatusOK, api.Health{Status: "ok"})
}

func (h *Handler) readyz(c *call) error {
	if err := h.ready(); err != nil {
		return &broker.Error{Code: broker.EUNAVAILABLE, Message: "not ready: " + err.Error()}
	}
	return c.writeJSON(http.StatusOK, api.Health{Status: "ready"})
}

// credentials issues a lease for the calling agent. The secret is
// revealed here and nowhere else; if the response cannot be delivered,
// the lease is revoked rather than left live with nobody holding it.
func (h *Handler) credentials(c *call) error {
	var req api.CredentialsRequest
	if err := c.decode(&req, false); err != nil {
		return err
	}
	if err := traceContext(c, &req); err != nil {
		return err
	}
	// latch's spans are children of the agent's (checked above).
	ctx := propagation.TraceContext{}.Extract(c.r.Context(), propagation.HeaderCarrier(c.r.Header))
	res, err := h.svc.Issue(ctx, issueRequest(c.who.id, &req))
	if err != nil {
		return err
	}
	if res.Pending != nil {
		// Nothing was minted: the agent asks again with the approval's ID
		// once it is approved.
		a := approvalOut(res.Pending)
		return c.writeJSON(http.StatusAccepted, credentialsWire{Approval: &a, Replayed: res.Replayed})
	}
	resp := credentialsWire{Lease: leaseOut(res.Lease), Replayed: res.Replayed}
	if !res.Replayed {
		resp.Secret = res.Secret.Reveal()
	}
	if err := c.writeJSON(http.StatusOK, resp); err != nil {
		h.log.Warn("credentials response not delivered; revoking its lease", "request_id", c.requestID, "lease", res.Lease.ID, "err", err)
		ctx := context.WithoutCancel(c.r.Context())
		if _, rerr := h.svc.Leases().Revoke(ctx, "latch", "response not delivered", broker.RevokeSelector{Lease: res.Lease.ID}); rerr != nil {
			h.log.Error("revoke an undelivered lease", "lease", res.Lease.ID, "err", rerr)
		}
	}
	return nil
}

// credentialsWire is api.CredentialsResponse as the server writes it: the
// secret as a plain map, where api.Secret would encode as [redacted].
type credentialsWire struct {
	Lease    api.Lease         `json:"lease,omitzero"`
	Secret   map[string]string `json:"secret,omitempty"`
	Approval *api.Approval     `json:"approval,omitempty"`
	Replayed bool              `json:"replayed,omitempty"`
}

// traceContext takes the request's W3C trace context: the traceparent
// header's trace ID becomes the request's trace_id (a body that names
// another is refused), and tracestate is checked for size.
func traceContext(c *call, req *api.CredentialsRequest) error {
	tp := c.r.Header.Get(api.HeaderTraceparent)
	if len(c.r.Header.Get(api.HeaderTracestate)) > api.MaxTracestate {
		return invalid(reasonBadTrace, "the tracestate header is longer than %d bytes", api.MaxTracestate)
	}
	if tp == "" {
		return nil
	}
	tc, err := api.ParseTraceparent(tp)
	if err != nil {
		return invalid(reasonBadTrace, "%v", err)
	}
	if req.TraceID != "" && req.TraceID != tc.TraceID {
		return invalid(reasonBadTrace, "trace_id %q and the traceparent header's trace ID %s differ: send one", truncate(req.TraceID, 40), tc.TraceID)
	}
	req.TraceID = tc.TraceID
	return nil
}

func issueRequest(agent string, req *api.CredentialsRequest) broker.IssueRequest {
	return broker.IssueRequest{
		Agent:      agent,
		Task:       req.Task,
		Params:     req.Params,
		Reason:     req.Reason,
		TraceID:    req.TraceID,
		RequestID:  req.RequestID,
		TTL:        req.TTL.D(),
		ApprovalID: req.ApprovalID,
	}
}

// explain evaluates the caller's request without issuing anything. An
// unregistered caller, or one asking about a task not granted to it,
// learns why it is denied but nothing of the template, and the probe is
// audited as a violation.
func (h *Handler) explain(c *call) error {
	var req api.ExplainRequest
	if err := c.decode(&req, false); err != nil {
		return err
	}
	d := h.svc.Explain(issueRequest(c.who.id, &req))
	for _, r := range d.Reasons {
		if r.Code == templates.ReasonUnknownAgent || r.Code == templates.ReasonTaskNotGranted {
			if err := h.svc.Audit().Violation(c.r.Context(), broker.Refusal{Actor: c.who.id, Endpoint: c.route, Reason: string(r.Code),
				Message: r.Message, Remote: c.r.RemoteAddr}); err != nil {
				h.log.Error("audit an explain probe", "request_id", c.requestID, "err", err)
			}
			break
		}
	}
	return c.writeJSON(http.StatusOK, api.ExplainResponse{Decision: decisionOut(d.ForCaller())})
}

// tasks lists the templates granted to the calling agent. An
// unregistered caller is refused, as its credentials requests are, and
// audited as a violation.
func (h *Handler) tasks(c *call) error {
	if _, err := query(c); err != nil {
		return err
	}
	p := h.svc.Policy()
	entry, ok := p.Agent(c.who.id)
	if !ok {
		msg := c.who.id + " is not a registered agent"
		if err := h.svc.Audit().Violation(c.r.Context(), broker.Refusal{Actor: c.who.id, Endpoint: c.route, Reason: string(templates.ReasonUnknownAgent),
			Message: msg, Remote: c.r.RemoteAddr}); err != nil {
			h.log.Error("audit a task listing", "request_id", c.requestID, "err", err)
		}
		return &broker.Error{Code: broker.EFORBIDDEN, Message: msg, Reasons: []string{string(templates.ReasonUnknownAgent)}}
	}
	out := api.TasksResponse{Tasks: []api.Task{}}
	for _, name := range entry.Templates {
		if t, ok := p.Template(name); ok {
			out.Tasks = append(out.Tasks, h.taskOut(c.who.id, t))
		}
	}
	return c.writeJSON(http.StatusOK, out)
}

// toolCall audits a tool call that the agent's MCP server reports.
func (h *Handler) toolCall(c *call) error {
	var req api.ToolCall
	if err := c.decode(&req, false); err != nil {
		return err
	}
	if err := h.svc.Audit().ToolCall(c.r.Context(), c.who.id, req.Client, req.Tool, req.Task, req.TraceID); err != nil {
		return err
	}
	return c.writeJSON(http.StatusOK, api.ToolCallResponse{Audited: true})
}

// taskOut is a granted template as GET /v1/tasks shows it; whether it
// needs approval now is evaluated with each parameter's default (or only
// value), and "depends" when a parameter has neither.
func (h *Handler) taskOut(agent string, t *templates.Template) api.Task {
	out := api.Task{Name: t.Name, Description: t.Description, Risk: t.Risk, Approval: "depends"}
	params := map[string]string{}
	for _, p := range t.Params {
		out.Params = append(out.Params, api.TaskParam{Name: p.Name, Description: p.Description, Enum: p.Enum, Pattern: p.Pattern, Default: p.Default})
		switch {
		case p.HasDefault:
			params[p.Name] = p.Default
		case len(p.Enum) == 1:
			params[p.Name] = p.Enum[0]
		}
	}
	if len(params) == len(t.Params) {
		d := h.svc.Explain(broker.IssueRequest{Agent: agent, Task: t.Name, Params: params})
		out.Approval = map[templates.Outcome]string{templates.ApprovalRequired: "yes", templates.Allow: "no", templates.Deny: "denied"}[d.Outcome]
		return out
	}
	// Escalation only raises a tier: one that needs approval always does.
	for _, tier := range h.svc.Policy().Tiers() {
		if tier.Name == t.Risk && tier.Approvals > 0 {
			out.Approval = "yes"
		}
	}
	return out
}

func (h *Handler) renew(c *call) error {
	id, err := leaseID(c)
	if err != nil {
		return err
	}
	var req api.RenewRequest
	if err := c.decode(&req, true); err != nil {
		return err
	}
	l, err := h.svc.Leases().Renew(c.r.Context(), c.who.id, id, req.TTL.D())
	if err != nil {
		return err
	}
	return c.writeJSON(http.StatusOK, api.LeaseResponse{Lease: leaseOut(l)})
}

func (h *Handler) release(c *call) error {
	id, err := leaseID(c)
	if err != nil {
		return err
	}
	if err := c.noBody(); err != nil {
		return err
	}
	if err := h.svc.Leases().Release(c.r.Context(), c.who.id, id); err != nil {
		return err
	}
	return c.writeJSON(http.StatusOK, api.ReleaseResponse{LeaseID: id, State: string(broker.StateRevoking)})
}

func (h *Handler) leases(c *call) error {
	q, err := query(c, "agent", "task", "state", "limit")
	if err != nil {
		return err
	}
	f := broker.LeaseFilter{Agent: q["agent"], Task: q["task"], State: broker.LeaseState(q["state"])}
	if f.Agent != "" {
		if err := agentID("agent", f.Agent); err != nil {
			return err
		}
	}
	if f.State != "" && !slices.Contains(api.LeaseStates, q["state"]) {
		return invalid(reasonBadQuery, "query parameter state=%q: want one of %v", truncate(q["state"], 32), api.LeaseStates)
	}
	limit, err := limitParam(q["limit"])
	if err != nil {
		return err
	}
	f.Limit = limit + 1 // one more says whether there are more
	ls, err := h.svc.Leases().List(c.r.Context(), f)
	if err != nil {
		return err
	}
	resp := api.LeasesResponse{Leases: make([]api.Lease, 0, min(len(ls), limit))}
	for i, l := range ls {
		if i == limit {
			resp.More = true
			break
		}
		resp.Leases = append(resp.Leases, leaseOut(l))
	}
	return c.writeJSON(http.StatusOK, resp)
}

func (h *Handler) lease(c *call) error {
	id, err := leaseID(c)
	if err != nil {
		return err
	}
	if _, err := query(c); err != nil {
		return err
	}
	l, err := h.svc.Leases().Get(c.r.Context(), id)
	if err != nil {
		return err
	}
	return c.writeJSON(http.StatusOK, api.LeaseResponse{Lease: leaseOut(l)})
}

func (h *Handler) revoke(c *call) error {
	var req api.RevokeRequest
	if err := c.decode(&req, false); err != nil {
		return err
	}
	if req.Agent != "" {
		if err := agentID("agent", req.Agent); err != nil {
			return err
		}
	}
	sel := broker.RevokeSelector{Lease: req.Lease, Agent: req.Agent, Task: req.Task, Template: req.Template, Version: req.Version, All: req.All}
	if req.DryRun {
		ls, err := h.svc.Leases().Selected(c.r.Context(), sel)
		if err != nil {
			return err
		}
		resp := api.RevokeResponse{Count: len(ls), DryRun: true, Leases: make([]api.Lease, len(ls))}
		for i, l := range ls {
			resp.Leases[i] = leaseOut(l)
		}
		return c.writeJSON(http.StatusOK, resp)
	}
	n, err := h.svc.Leases().Revoke(c.r.Context(), c.who.id, req.Reason, sel)
	if err != nil {
		return err
	}
	return c.writeJSON(http.StatusOK, api.RevokeResponse{Count: n})
}

func (h *Handler) agents(c *call) error {
	if _, err := query(c); err != nil {
		return err
	}
	recs, err := h.svc.Agents().List(c.r.Context())
	if err != nil {
		return err
	}
	p := h.svc.Policy()
	resp := api.AgentsResponse{Entries: []api.AgentEntry{}, Agents: make([]api.Agent, 0, len(recs))}
	for _, a := range p.Agents() {
		resp.Entries = append(resp.Entries, entryOut(a))
	}
	for _, r := range recs {
		resp.Agents = append(resp.Agents, agentOut(r, p))
	}
	return c.writeJSON(http.StatusOK, resp)
}

// report is the inventory of grants; ?unused=D keeps those idle for D.
func (h *Handler) report(c *call) error {
	q, err := query(c, "unused")
	if err != nil {
		return err
	}
	var unused time.Duration
	if s := q["unused"]; s != "" {
		if unused, err = api.ParseAge(s); err != nil {
			return invalid(reasonBadQuery, "query parameter unused: %v", err)
		}
	}
	inv, err := h.svc.Report(c.r.Context())
	if err != nil {
		return err
	}
	resp := api.ReportResponse{At: inv.At.UTC(), Unused: api.Duration(unused), Grants: []api.Grant{}}
	for _, g := range inv.Unused(unused) {
		resp.Grants = append(resp.Grants, api.Grant{Agent: g.Agent, Owner: g.Owner, Template: g.Template, Since: utc(g.Since),
			LastUsed: utc(g.LastUsed), LastAgent: g.LastAgent, Agents: g.Agents, Idle: api.Duration(g.Idle(inv.At))})
	}
	return c.writeJSON(http.StatusOK, resp)
}

var agentActions = map[string]broker.AgentState{
	api.ActionPause:      broker.AgentPaused,
	api.ActionQuarantine: broker.AgentQuarantined,
	api.ActionResume:     broker.AgentActive,
}

// agentAction pauses, quarantines (pause and revoke every live lease) or
// resumes an agent. The agent's SPIFFE ID is one path segment, escaped.
func (h *Handler) agentAction(c *call) error {
	state, ok := agentActions[c.r.PathValue("action")]
	if !ok {
		return broker.Errorf(broker.ENOTFOUND, "no agent action %q: use pause, quarantine or resume", truncate(c.r.PathValue("action"), 32))
	}
	id := c.r.PathValue("id")
	if err := agentID("agent ID in the path", id); err != nil {
		return err
	}
	var req api.AgentActionRequest
	if err := c.decode(&req, false); err != nil {
		return err
	}
	if err := h.svc.Agents().SetState(c.r.Context(), c.who.id, id, state, req.Reason); err != nil {
		return err
	}
	out := api.Agent{ID: id, State: string(state), Reason: req.Reason, Actor: c.who.id, ChangedAt: h.now().UTC()}
	if r, err := h.svc.Agents().Get(c.r.Context(), id); err == nil {
		out = agentOut(r, h.svc.Policy())
	}
	return c.writeJSON(http.StatusOK, api.AgentResponse{Agent: out})
}

func (h *Handler) freeze(c *call) error {
	var req api.FreezeRequest
	if err := c.decode(&req, false); err != nil {
		return err
	}
	if err := h.svc.Agents().SetFreeze(c.r.Context(), c.who.id, *req.On, req.Reason); err != nil {
		return err
	}
	return c.writeJSON(http.StatusOK, api.FreezeResponse{Freeze: api.Freeze{Active: *req.On, Reason: req.Reason, Actor: c.who.id, Since: h.now().UTC()}})
}

// maxAuditScan bounds how many events one audit page reads looking for
// matches of a filter; a page that hits it ends early with more set.
const maxAuditScan = 10 * api.MaxListLimit

func (h *Handler) audit(c *call) error {
	q, err := query(c, "after", "limit", "agent", "type")
	if err != nil {
		return err
	}
	after, err := seqParam("after", q["after"])
	if err != nil {
		return err
	}
	limit, err := limitParam(q["limit"])
	if err != nil {
		return err
	}
	f, err := eventFilter(q["agent"], q["type"])
	if err != nil {
		return err
	}
	resp := api.AuditResponse{Events: []api.Event{}, Next: after}
	scanned := 0
	err = h.svc.Audit().Events(c.r.Context(), after, func(e broker.Event) (bool, error) {
		if len(resp.Events) == limit || scanned == maxAuditScan {
			resp.More = true
			return false, nil
		}
		scanned++
		resp.Next = e.Seq
		if f.Match(e) {
			resp.Events = append(resp.Events, EventOut(e))
		}
		return true, nil
	})
	if err != nil {
		return err
	}
	return c.writeJSON(http.StatusOK, resp)
}

// leaseID returns the {id} path value, which must look like a lease ID.
func leaseID(c *call) (string, error) {
	id := c.r.PathValue("id")
	if !api.ValidLeaseID(id) {
		return "", invalid(reasonBadPath, "%q is not a lease ID (26 characters of Crockford base32)", truncate(id, 64))
	}
	return id, nil
}

// agentID checks that s is a SPIFFE ID.
func agentID(what, s string) error {
	if err := api.SPIFFEID("agent", s); err != nil {
		return invalid(reasonBadPath, "%s: %s", what, err.(*api.FieldError).Problem)
	}
	if _, err := spiffeid.FromString(s); err != nil {
		return invalid(reasonBadPath, "%s %q is not a SPIFFE ID: %v", what, truncate(s, 64), err)
	}
	return nil
}

// query returns the request's query parameters, refusing any not in
// allowed and any given twice.
func query(c *call, allowed ...string) (map[string]string, error) {
	vals := c.r.URL.Query()
	out := make(map[string]string, len(vals))
	for k, v := range vals {
		if !slices.Contains(allowed, k) {
			if len(allowed) == 0 {
				return nil, invalid(reasonBadQuery, "unknown query parameter %q: %s takes none", truncate(k, 32), c.route)
			}
			return nil, invalid(reasonBadQuery, "unknown query parameter %q: %s takes %v", truncate(k, 32), c.route, allowed)
		}
		if len(v) > 1 {
			return nil, invalid(reasonBadQuery, "query parameter %q given %d times: give it once", k, len(v))
		}
		out[k] = v[0]
	}
	return out, nil
}

func limitParam(s string) (int, error) {
	if s == "" {
		return api.DefaultListLimit, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > api.MaxListLimit {
		return 0, invalid(reasonBadQuery, "query parameter limit=%q: want an integer from 1 to %d", truncate(s, 32), api.MaxListLimit)
	}
	return n, nil
}

func seqParam(name, s string) (uint64, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, invalid(reasonBadQuery, "%s=%q: want an audit sequence number (an integer ≥ 0)", name, truncate(s, 32))
	}
	return n, nil
}
