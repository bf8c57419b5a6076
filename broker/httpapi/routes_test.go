package httpapi_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/api"
	"github.com/latchbroker/latch/broker/client"
)

type clientResponse = api.CredentialsResponse

func credReq(task, region string) api.CredentialsRequest {
	return api.CredentialsRequest{Task: task, Params: map[string]string{"region": region}, Reason: "nightly run", TraceID: "trace-1"}
}

var ctx = context.Background()

func TestAPI_AgentRoutes(t *testing.T) {
	e := newEnv(t)
	c := e.as(reportBot)

	res, err := c.Credentials(ctx, api.CredentialsRequest{Task: "report", Params: map[string]string{"region": "eu"},
		Reason: "nightly run", TTL: api.Duration(5 * time.Minute), RequestID: "run-1", TraceID: "trace-1"})
	if err != nil {
		t.Fatal(err)
	}
	l := res.Lease
	if res.Secret["password"] != canary || res.Replayed {
		t.Fatalf("secret = %v (fields %d), replayed = %v; want the minted secret", res.Secret, len(res.Secret), res.Replayed)
	}
	if l.Agent != reportBot.String() || l.Task != "report" || l.State != api.StateActive || l.Params["region"] != "eu" ||
		l.Reason != "nightly run" || l.TraceID != "trace-1" || l.RequestID != "run-1" || l.Refs.TokenAccessor != "acc-"+l.ID ||
		!api.ValidLeaseID(l.ID) || l.TemplateVersion == "" {
		t.Fatalf("lease = %+v", l)
	}
	if got := l.ExpiresAt.Sub(l.IssuedAt); got != 5*time.Minute {
		t.Fatalf("TTL = %s, want the 5m asked for", got)
	}

	t.Run("Replay", func(t *testing.T) {
		again, err := c.Credentials(ctx, api.CredentialsRequest{Task: "report", Params: map[string]string{"region": "eu"}, RequestID: "run-1"})
		if err != nil {
			t.Fatal(err)
		}
		if !again.Replayed || again.Lease.ID != l.ID || len(again.Secret) != 0 {
			t.Fatalf("retry = %+v; want the same lease, replayed, without the secret", again)
		}
	})

	t.Run("Explain", func(t *testing.T) {
		d, err := c.Explain(ctx, api.ExplainRequest{Task: "report", Params: map[string]string{"region": "us"}})
		if err != nil {
			t.Fatal(err)
		}
		if d.Outcome != "allow" || d.Task != "report" || d.Tier != "low" || d.TTL.D() != 10*time.Minute || len(d.Trace) == 0 {
			t.Fatalf("decision = %+v", d)
		}
		d, err = c.Explain(ctx, api.ExplainRequest{Task: "report", Params: map[string]string{"region": "mars"}})
		if err != nil {
			t.Fatal(err)
		}
		if d.Outcome != "deny" || len(d.Reasons) == 0 || d.Reasons[0].Code != "param_constraint" {
			t.Fatalf("decision = %+v, want a deny for the parameter", d)
		}
	})

	t.Run("ExplainHidesTemplatesFromStrangers", func(t *testing.T) {
		before := len(e.events())
		d, err := e.as(intruder).Explain(ctx, api.ExplainRequest{Task: "ticket", Params: map[string]string{"ticket": "1"}})
		if err != nil {
			t.Fatal(err)
		}
		if d.Outcome != "deny" || d.TemplateVersion != "" || d.Rendered.Policy != "" || len(d.Trace) != 0 || d.Reasons[0].Code != "unknown_agent" {
			t.Fatalf("decision for an unregistered caller = %+v; want the denial and nothing of the template", d)
		}
		evs := e.events()[before:]
		if len(evs) != 1 || evs[0].Type != broker.EventViolation || evs[0].Actor != intruder.String() {
			t.Fatalf("events = %+v, want one violation", evs)
		}
	})

	t.Run("Renew", func(t *testing.T) {
		e.clock.Add(time.Minute)
		renewed, err := c.Renew(ctx, l.ID, 20*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if want := e.clock.Now().Add(20 * time.Minute); !renewed.ExpiresAt.Equal(want) {
			t.Fatalf("expires_at = %s, want %s", renewed.ExpiresAt, want)
		}
		// An empty body renews by the lease's original TTL.
		status, _, body := e.raw(reportBot, http.MethodPost, "/v1/leases/"+l.ID+"/renew", "", nil)
		if status != http.StatusOK {
			t.Fatalf("renew without a body: %d %s", status, body)
		}
	})

	t.Run("Release", func(t *testing.T) {
		if err := c.Release(ctx, l.ID); err != nil {
			t.Fatal(err)
		}
		got, err := e.svc.Leases().Get(ctx, l.ID)
		if err != nil || got.State != broker.StateRevoking {
			t.Fatalf("lease after release = %+v, %v; want revoking", got, err)
		}
	})

	t.Run("JWTSVID", func(t *testing.T) {
		res, err := e.asJWT(ticketBot).Credentials(ctx, credReq("report", "us"))
		if err != nil {
			t.Fatal(err)
		}
		if res.Lease.Agent != ticketBot.String() || res.Secret["password"] != canary {
			t.Fatalf("response = %+v", res.Lease)
		}
	})
}

func TestAPI_OperatorRoutes(t *testing.T) {
	e := newEnv(t)
	a := e.issue(reportBot, "report", "eu").Lease
	b := e.issue(ticketBot, "report", "us").Lease
	op := e.as(admin)

	t.Run("Leases", func(t *testing.T) {
		all, err := op.Leases(ctx, api.LeaseQuery{})
		if err != nil {
			t.Fatal(err)
		}
		if len(all.Leases) != 2 || all.Leases[0].ID != b.ID || all.More {
			t.Fatalf("leases = %+v, want both, newest first", all)
		}
		one, err := op.Leases(ctx, api.LeaseQuery{Agent: reportBot.String(), Task: "report", State: api.StateActive})
		if err != nil || len(one.Leases) != 1 || one.Leases[0].ID != a.ID {
			t.Fatalf("filtered = %+v, %v", one, err)
		}
		page, err := op.Leases(ctx, api.LeaseQuery{Limit: 1})
		if err != nil || len(page.Leases) != 1 || !page.More {
			t.Fatalf("limit 1 = %+v, %v; want one lease and more", page, err)
		}
		got, err := op.Lease(ctx, a.ID)
		if err != nil || got.ID != a.ID || got.Agent != reportBot.String() {
			t.Fatalf("show = %+v, %v", got, err)
		}
	})

	t.Run("Agents", func(t *testing.T) {
		inv, err := op.Agents(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(inv.Entries) != 4 || inv.Entries[2].Rate != "2/m" || inv.Entries[3].MaxActive != 2 {
			t.Fatalf("entries = %+v", inv.Entries)
		}
		i := slices.IndexFunc(inv.Agents, func(x api.Agent) bool { return x.ID == reportBot.String() })
		if i < 0 || inv.Agents[i].State != api.AgentActive || inv.Agents[i].Pattern != "spiffe://example.org/agent/report-*" || inv.Agents[i].LastUsed.IsZero() {
			t.Fatalf("agents = %+v", inv.Agents)
		}
	})

	t.Run("RevokeDryRun", func(t *testing.T) {
		res, err := op.Revoke(ctx, api.RevokeRequest{All: true, Reason: "look", DryRun: true})
		if err != nil || res.Count != 2 || !res.DryRun || len(res.Leases) != 2 {
			t.Fatalf("dry run = %+v, %v", res, err)
		}
		if l, _ := e.svc.Leases().Get(ctx, a.ID); l.State != broker.StateActive {
			t.Fatal("a dry run revoked")
		}
	})

	t.Run("RevokeByLease", func(t *testing.T) {
		res, err := op.Revoke(ctx, api.RevokeRequest{Lease: a.ID, Reason: "leaked"})
		if err != nil || res.Count != 1 {
			t.Fatalf("revoke = %+v, %v", res, err)
		}
		l, _ := e.svc.Leases().Get(ctx, a.ID)
		if l.State != broker.StateRevoking || l.RevokeReason != "leaked" {
			t.Fatalf("lease = %+v", l)
		}
		ev := e.events()
		last := ev[len(ev)-1]
		if last.Type != broker.EventRevoke || last.Actor != admin.String() || last.Lease != a.ID {
			t.Fatalf("last event = %+v, want the revoke by %s", last, admin)
		}
	})

	t.Run("PauseResume", func(t *testing.T) {
		ag, err := op.PauseAgent(ctx, reportBot.String(), "odd behaviour")
		if err != nil || ag.State != api.AgentPaused || ag.Actor != admin.String() || ag.Reason != "odd behaviour" {
			t.Fatalf("pause = %+v, %v", ag, err)
		}
		_, err = e.as(reportBot).Credentials(ctx, credReq("report", "eu"))
		if client.Code(err) != api.CodeForbidden || !strings.Contains(err.Error(), "agent_paused") {
			t.Fatalf("credentials of a paused agent: %v", err)
		}
		if ag, err = op.ResumeAgent(ctx, reportBot.String(), "checked"); err != nil || ag.State != api.AgentActive {
			t.Fatalf("resume = %+v, %v", ag, err)
		}
		e.issue(reportBot, "report", "eu")
	})

	t.Run("Quarantine", func(t *testing.T) {
		ag, err := op.QuarantineAgent(ctx, ticketBot.String(), "leak")
		if err != nil || ag.State != api.AgentQuarantined {
			t.Fatalf("quarantine = %+v, %v", ag, err)
		}
		if l, _ := e.svc.Leases().Get(ctx, b.ID); l.State != broker.StateRevoking {
			t.Fatalf("lease of a quarantined agent is %s, want revoking", l.State)
		}
	})

	t.Run("Freeze", func(t *testing.T) {
		f, err := op.Freeze(ctx, true, "incident 42")
		if err != nil || !f.Active || f.Actor != admin.String() {
			t.Fatalf("freeze = %+v, %v", f, err)
		}
		_, err = e.as(reportBot).Credentials(ctx, credReq("report", "eu"))
		if client.Code(err) != api.CodeForbidden || !strings.Contains(err.Error(), "global_freeze") {
			t.Fatalf("credentials during a freeze: %v", err)
		}
		if f, err = op.Freeze(ctx, false, "over"); err != nil || f.Active {
			t.Fatalf("unfreeze = %+v, %v", f, err)
		}
		e.issue(reportBot, "report", "eu")
	})

	t.Run("Audit", func(t *testing.T) {
		all := e.events()
		page, err := op.Audit(ctx, api.AuditQuery{Limit: 3})
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Events) != 3 || page.Events[0].Seq != 1 || page.Next != 3 || !page.More {
			t.Fatalf("first page = %+v", page)
		}
		if page.Events[0].Hash != all[0].Hash || page.Events[1].PrevHash != all[0].Hash {
			t.Fatal("audit page does not carry the chain")
		}
		var seen []api.Event
		for after := uint64(0); ; {
			p, err := op.Audit(ctx, api.AuditQuery{After: after, Limit: 4})
			if err != nil {
				t.Fatal(err)
			}
			seen = append(seen, p.Events...)
			if !p.More {
				break
			}
			after = p.Next
		}
		if len(seen) != len(all) {
			t.Fatalf("paging saw %d events, the log has %d", len(seen), len(all))
		}
		issues, err := op.Audit(ctx, api.AuditQuery{Types: []string{"issue"}, Agent: reportBot.String(), Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range issues.Events {
			if ev.Type != "issue" || ev.Actor != reportBot.String() {
				t.Fatalf("filtered page holds %+v", ev)
			}
		}
		if len(issues.Events) != 3 {
			t.Fatalf("report-bot's issues = %d, want 3", len(issues.Events))
		}
	})
}

// TestAPI_ErrorStatus drives every error code through a real request and
// checks its status, envelope and headers.
func TestAPI_ErrorStatus(t *testing.T) {
	tests := []struct {
		name   string
		setup  func(*env)
		do     func(*env) (int, http.Header, []byte)
		status int
		code   string
		reason string
		check  func(*testing.T, *env, http.Header, errorBody)
	}{
		{
			name: "EINVALID",
			do: func(e *env) (int, http.Header, []byte) {
				return e.raw(reportBot, "POST", "/v1/credentials", "application/json", []byte(`{"task":"report","colour":"red"}`))
			},
			status: 400, code: api.CodeInvalid, reason: "unknown_field",
		},
		{
			name: "CodeUnauthorized",
			do: func(e *env) (int, http.Header, []byte) {
				return e.rawWith(e.httpClient(nil, nil), "POST", "/v1/credentials", "application/json", []byte(`{"task":"report"}`))
			},
			status: 401, code: api.CodeUnauthorized, reason: "no_credential",
			check: func(t *testing.T, _ *env, h http.Header, _ errorBody) {
				if h.Get("WWW-Authenticate") == "" {
					t.Error("401 without WWW-Authenticate")
				}
			},
		},
		{
			name: "EFORBIDDEN",
			setup: func(e *env) {
				e.clock.Add(18 * 24 * time.Hour) // March 28th: billing-close
			},
			do: func(e *env) (int, http.Header, []byte) {
				return e.raw(reportBot, "POST", "/v1/credentials", "application/json", []byte(`{"task":"report","params":{"region":"eu"}}`))
			},
			status: 403, code: api.CodeForbidden, reason: "frozen:billing-close",
			check: func(t *testing.T, e *env, _ http.Header, b errorBody) {
				if b.NextAllowedAt.IsZero() || !b.NextAllowedAt.After(e.clock.Now()) || !strings.Contains(b.Message, "billing-close") {
					t.Errorf("denial = %+v; want the window named and next_allowed_at", b)
				}
			},
		},
		{
			name: "EFORBIDDEN/NotGranted",
			do: func(e *env) (int, http.Header, []byte) {
				return e.raw(reportBot, "POST", "/v1/credentials", "application/json", []byte(`{"task":"ticket","params":{"ticket":"7"}}`))
			},
			status: 403, code: api.CodeForbidden, reason: "task_not_granted",
		},
		{
			name: "ENOTFOUND",
			do: func(e *env) (int, http.Header, []byte) {
				return e.raw(admin, "GET", "/v1/leases/01JZZZZZZZZZZZZZZZZZZZZZZZ", "", nil)
			},
			status: 404, code: api.CodeNotFound,
		},
		{
			name:   "ENOTFOUND/Route",
			do:     func(e *env) (int, http.Header, []byte) { return e.raw(admin, "GET", "/v1/nothing", "", nil) },
			status: 404, code: api.CodeNotFound,
		},
		{
			name:   "MethodNotAllowed",
			do:     func(e *env) (int, http.Header, []byte) { return e.raw(admin, "PUT", "/v1/credentials", "", nil) },
			status: 405, code: api.CodeMethodNotAllowed,
			check: func(t *testing.T, _ *env, h http.Header, _ errorBody) {
				if h.Get("Allow") == "" {
					t.Error("405 without Allow")
				}
			},
		},
		{
			name: "ECONFLICT",
			do: func(e *env) (int, http.Header, []byte) {
				l := e.issue(reportBot, "report", "eu").Lease
				if s, _, b := e.raw(reportBot, "DELETE", "/v1/leases/"+l.ID, "", nil); s != 200 {
					e.t.Fatalf("first release: %d %s", s, b)
				}
				return e.raw(reportBot, "DELETE", "/v1/leases/"+l.ID, "", nil)
			},
			status: 409, code: api.CodeConflict,
		},
		{
			name: "TooLarge",
			do: func(e *env) (int, http.Header, []byte) {
				return e.raw(reportBot, "POST", "/v1/credentials", "application/json", []byte(`{"task":"report","reason":"`+strings.Repeat("x", api.MaxBodyBytes)+`"}`))
			},
			status: 413, code: api.CodeTooLarge, reason: "too_large",
		},
		{
			name: "ELIMIT",
			do: func(e *env) (int, http.Header, []byte) {
				for range 2 {
					e.issue(chatty, "report", "eu")
				}
				return e.raw(chatty, "POST", "/v1/credentials", "application/json", []byte(`{"task":"report","params":{"region":"eu"}}`))
			},
			status: 429, code: api.CodeLimit, reason: "rate_limited",
			check: func(t *testing.T, _ *env, h http.Header, b errorBody) {
				// 2/m: the next token comes in 30 s.
				if h.Get("Retry-After") != "30" || b.RetryAfter != 30 {
					t.Errorf("Retry-After = %q, retry_after = %d; want 30", h.Get("Retry-After"), b.RetryAfter)
				}
			},
		},
		{
			name:  "EUNAVAILABLE/Backend",
			setup: func(e *env) { e.backend.SetErrors(fmt.Errorf("vault sealed: %w", broker.ErrBackendUnavailable), nil) },
			do: func(e *env) (int, http.Header, []byte) {
				return e.raw(reportBot, "POST", "/v1/credentials", "application/json", []byte(`{"task":"report","params":{"region":"eu"}}`))
			},
			status: 503, code: api.CodeUnavailable,
		},
		{
			name:  "EUNAVAILABLE/Audit",
			setup: func(e *env) { e.store.fail.Store(true) },
			do: func(e *env) (int, http.Header, []byte) {
				return e.raw(reportBot, "POST", "/v1/credentials", "application/json", []byte(`{"task":"report","params":{"region":"eu"}}`))
			},
			status: 503, code: api.CodeUnavailable,
		},
		{
			name:  "EUNAVAILABLE/NotReady",
			setup: func(e *env) { msg := "reconciliation running"; e.notReady.Store(&msg) },
			do: func(e *env) (int, http.Header, []byte) {
				return e.rawWith(e.httpClient(nil, nil), "GET", "/readyz", "", nil)
			},
			status: 503, code: api.CodeUnavailable,
			check: func(t *testing.T, _ *env, _ http.Header, b errorBody) {
				if !strings.Contains(b.Message, "reconciliation running") {
					t.Errorf("message = %q, want the reason", b.Message)
				}
			},
		},
		{
			name:  "EINTERNAL",
			setup: func(e *env) { e.backend.SetErrors(errors.New("permission denied on path secret/INTERNAL-DETAIL"), nil) },
			do: func(e *env) (int, http.Header, []byte) {
				return e.raw(reportBot, "POST", "/v1/credentials", "application/json", []byte(`{"task":"report","params":{"region":"eu"}}`))
			},
			status: 500, code: api.CodeInternal,
			check: func(t *testing.T, e *env, h http.Header, b errorBody) {
				if strings.Contains(b.Message, "INTERNAL-DETAIL") || strings.Contains(b.Message, "backend") || b.RequestID == "" || b.RequestID != h.Get("X-Request-Id") {
					t.Errorf("500 body = %+v; want a generic message with the request ID", b)
				}
				if !strings.Contains(e.logs.String(), "INTERNAL-DETAIL") {
					t.Error("the cause of a 500 is not in the log")
				}
			},
		},
	}
	seen := map[string]bool{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			if tt.setup != nil {
				tt.setup(e)
			}
			status, h, body := tt.do(e)
			if status != tt.status {
				t.Fatalf("status = %d, want %d; body %s", status, tt.status, body)
			}
			if ct := h.Get("Content-Type"); ct != "application/json" {
				t.Fatalf("Content-Type = %q", ct)
			}
			b := apiError(t, body)
			if b.Code != tt.code || b.Message == "" {
				t.Fatalf("error = %+v, want code %s", b, tt.code)
			}
			if api.Status(b.Code) != status {
				t.Fatalf("status %d disagrees with the table's %d for %s", status, api.Status(b.Code), b.Code)
			}
			if tt.reason != "" && !slices.Contains(b.Reasons, tt.reason) {
				t.Fatalf("reasons = %v, want %s", b.Reasons, tt.reason)
			}
			if h.Get("Cache-Control") != "no-store" {
				t.Fatal("error without Cache-Control: no-store")
			}
			if tt.check != nil {
				tt.check(t, e, h, b)
			}
			seen[b.Code] = true
		})
	}
	for _, code := range api.Codes() {
		if !seen[code] {
			t.Errorf("no request produced code %s", code)
		}
	}
}

func TestAPI_BudgetIs429(t *testing.T) {
	e := newEnv(t)
	c := e.as(hoarder)
	if _, err := c.Credentials(ctx, credReq("budgeted", "eu")); err != nil {
		t.Fatal(err)
	}
	_, err := c.Credentials(ctx, credReq("budgeted", "us"))
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Status != 429 || ce.Code != api.CodeLimit || ce.RetryAfter != 10*time.Minute ||
		!slices.Contains(ce.Reasons, "template_budget") {
		t.Fatalf("err = %#v; want 429 template_budget, retry after the lease's 10m", err)
	}
	if _, err := c.Credentials(ctx, credReq("report", "eu")); err != nil {
		t.Fatal(err)
	}
	_, err = c.Credentials(ctx, credReq("report", "us"))
	if !errors.As(err, &ce) || ce.Status != 429 || !slices.Contains(ce.Reasons, "agent_budget") || ce.RetryAfter <= 0 {
		t.Fatalf("err = %v; want 429 agent_budget", err)
	}
}

func TestAPI_AgentActsOnlyOnItsOwnLeases(t *testing.T) {
	e := newEnv(t)
	l := e.issue(reportBot, "report", "eu").Lease
	other := e.as(ticketBot)
	if err := other.Release(ctx, l.ID); client.Code(err) != api.CodeNotFound {
		t.Fatalf("release of another agent's lease: %v; want not_found", err)
	}
	if _, err := other.Renew(ctx, l.ID, 0); client.Code(err) != api.CodeNotFound {
		t.Fatalf("renew of another agent's lease: %v; want not_found", err)
	}
	if got, _ := e.svc.Leases().Get(ctx, l.ID); got.State != broker.StateActive {
		t.Fatalf("lease is %s after another agent's attempts", got.State)
	}
	// Agents are not operators.
	if _, err := e.as(reportBot).Leases(ctx, api.LeaseQuery{}); client.Code(err) != api.CodeForbidden {
		t.Fatalf("agent listing leases: %v; want forbidden", err)
	}
}

func TestAPI_Roles(t *testing.T) {
	e := newEnv(t)
	l := e.issue(reportBot, "report", "eu").Lease
	list := func(c *client.Client) error { _, err := c.Leases(ctx, api.LeaseQuery{}); return err }
	revoke := func(c *client.Client) error {
		_, err := c.Revoke(ctx, api.RevokeRequest{Lease: l.ID, Reason: "test", DryRun: true})
		return err
	}
	pause := func(c *client.Client) error { _, err := c.PauseAgent(ctx, chatty.String(), "test"); return err }
	freeze := func(c *client.Client) error { _, err := c.Freeze(ctx, true, "test"); return err }
	unfreeze := func(c *client.Client) error { _, err := c.Freeze(ctx, false, "test"); return err }
	audit := func(c *client.Client) error { _, err := c.Audit(ctx, api.AuditQuery{}); return err }
	show := func(c *client.Client) error { _, err := c.Lease(ctx, l.ID); return err }
	agents := func(c *client.Client) error { _, err := c.Agents(ctx); return err }
	type op struct {
		name string
		do   func(*client.Client) error
		role string
	}
	ops := []op{{"list", list, "viewer"}, {"show", show, "viewer"}, {"agents", agents, "viewer"}, {"audit", audit, "viewer"},
		{"revoke", revoke, "revoker"}, {"pause", pause, "revoker"}, {"freeze", freeze, "revoker"},
		{"unfreeze", unfreeze, "admin"}}
	callers := []struct {
		name  string
		id    string
		c     *client.Client
		roles []string
	}{
		{"viewer", viewer.String(), e.as(viewer), []string{"viewer"}},
		{"revoker", revoker.String(), e.as(revoker), []string{"revoker"}},
		{"admin", admin.String(), e.as(admin), []string{"viewer", "revoker", "admin"}},
		{"approver", approver.String(), e.as(approver), nil},
		{"agent", reportBot.String(), e.as(reportBot), nil},
		{"stranger", intruder.String(), e.as(intruder), nil},
	}
	for _, who := range callers {
		for _, o := range ops {
			t.Run(who.name+"/"+o.name, func(t *testing.T) {
				before := len(e.events())
				err := o.do(who.c)
				if slices.Contains(who.roles, o.role) {
					if err != nil {
						t.Fatalf("%s may %s: %v", who.name, o.name, err)
					}
					return
				}
				want := o.role
				if o.name == "unfreeze" && !slices.Contains(who.roles, "revoker") {
					want = "revoker" // the route is a stop; only then does the Service ask for admin
				}
				var ce *client.Error
				if !errors.As(err, &ce) || ce.Status != 403 || !slices.Contains(ce.Reasons, "missing_role:"+want) || !strings.Contains(ce.Message, want) {
					t.Fatalf("%s %s: %v; want 403 naming the %s role", who.name, o.name, err, want)
				}
				evs := e.events()[before:]
				if len(evs) != 1 || evs[0].Type != broker.EventViolation || evs[0].Actor != who.id || evs[0].Reasons[0] != "missing_role" {
					t.Fatalf("events = %+v, want one violation by %s", evs, who.id)
				}
			})
		}
	}
	if l2, _ := e.svc.Leases().Get(ctx, l.ID); l2.State != broker.StateActive {
		t.Fatal("a role check let a revoke through")
	}
}

func TestAPI_RevokerRevokesAgent(t *testing.T) {
	e := newEnv(t)
	a := e.issue(reportBot, "report", "eu").Lease
	b := e.issue(reportBot, "report", "us").Lease
	other := e.issue(ticketBot, "report", "us").Lease
	res, err := e.as(revoker).Revoke(ctx, api.RevokeRequest{Agent: reportBot.String(), Reason: "compromised"})
	if err != nil || res.Count != 2 {
		t.Fatalf("revoke = %+v, %v", res, err)
	}
	if _, err := e.svc.Leases().ProcessRevocations(ctx); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{a.ID, b.ID} {
		if l, _ := e.svc.Leases().Get(ctx, id); l.State != broker.StateRevoked {
			t.Fatalf("lease %s is %s, want revoked", id, l.State)
		}
		if e.backend.Alive(id) {
			t.Fatalf("lease %s is still alive in the backend", id)
		}
	}
	if l, _ := e.svc.Leases().Get(ctx, other.ID); l.State != broker.StateActive {
		t.Fatal("another agent's lease was revoked")
	}
}

func TestAPI_AgentIDInPath(t *testing.T) {
	e := newEnv(t)
	// Escaped into one segment: works (the client does this).
	path := "/v1/agents/" + url.PathEscape(chatty.String()) + "/pause"
	status, _, body := e.raw(admin, "POST", path, "application/json", []byte(`{"reason":"r"}`))
	if status != 200 {
		t.Fatalf("escaped agent ID: %d %s", status, body)
	}
	// Not a SPIFFE ID: 400 naming it.
	status, _, body = e.raw(admin, "POST", "/v1/agents/report-bot/pause", "application/json", []byte(`{"reason":"r"}`))
	if b := apiError(t, body); status != 400 || !strings.Contains(b.Message, "SPIFFE ID") {
		t.Fatalf("bad agent ID: %d %s", status, body)
	}
	// Unknown action: 404.
	status, _, body = e.raw(admin, "POST", "/v1/agents/"+url.PathEscape(chatty.String())+"/delete", "application/json", []byte(`{"reason":"r"}`))
	if status != 404 {
		t.Fatalf("unknown action: %d %s", status, body)
	}
}

func TestAPI_Health(t *testing.T) {
	e := newEnv(t)
	anon := e.newClient(e.httpClient(nil, nil))
	msg := "waiting for Vault"
	e.notReady.Store(&msg)
	if err := anon.Health(ctx); err != nil {
		t.Fatalf("healthz while not ready: %v", err)
	}
	err := anon.Ready(ctx)
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Status != 503 || !strings.Contains(ce.Message, msg) {
		t.Fatalf("readyz = %v, want 503 naming why", err)
	}
	e.notReady.Store(nil)
	if err := anon.Ready(ctx); err != nil {
		t.Fatalf("readyz once ready: %v", err)
	}
}

// TestAPI_ApprovalRequired: a request that needs approval gets 202 and
// the pending approval; once approved, asking with its ID gets the lease.
func TestAPI_ApprovalRequired(t *testing.T) {
	e := newEnv(t)
	c := e.as(ticketBot)
	req := api.CredentialsRequest{Task: "ticket", Params: map[string]string{"ticket": "42"}, Reason: "close it", RequestID: "t-42"}
	status, _, body := e.raw(ticketBot, "POST", "/v1/credentials", "application/json", []byte(`{"task":"ticket","params":{"ticket":"42"},"reason":"close it","request_id":"t-42"}`))
	if status != http.StatusAccepted {
		t.Fatalf("status = %d, want 202; %s", status, body)
	}
	if strings.Contains(string(body), `"lease"`) || strings.Contains(string(body), `"secret"`) {
		t.Fatalf("a 202 carries a lease or secret: %s", body)
	}
	res, err := c.Credentials(ctx, req) // a retry: the same approval
	if err != nil {
		t.Fatal(err)
	}
	a := res.Approval
	if a == nil || !res.Replayed || a.Status != api.ApprovalPending || a.Agent != ticketBot.String() || a.Task != "ticket" ||
		a.Required != 1 || a.Tier != "high" || a.Rendered.Path == "" && a.Rendered.Policy == "" && len(a.Rendered.Vars) == 0 && a.TemplateVersion == "" {
		t.Fatalf("response = %+v, approval %+v", res, a)
	}
	if e.backend.Mints.Load() != 0 {
		t.Fatal("minted before approval")
	}
	pickup := api.CredentialsRequest{ApprovalID: a.ID}
	if _, err := c.Credentials(ctx, pickup); client.Code(err) != api.CodeConflict || !strings.Contains(err.Error(), "pending") {
		t.Fatalf("pickup while pending: %v; want 409", err)
	}
	if _, err := e.svc.Approvals().Review(ctx, approver.String(), a.ID, true, "fine", false); err != nil {
		t.Fatal(err)
	}
	got, err := c.Credentials(ctx, pickup)
	if err != nil {
		t.Fatal(err)
	}
	if got.Approval != nil || got.Lease.ApprovalID != a.ID || got.Secret["password"] != canary {
		t.Fatalf("pickup = %+v", got)
	}
	if _, err := e.as(reportBot).Credentials(ctx, pickup); client.Code(err) != api.CodeNotFound {
		t.Fatalf("another agent picking up: %v; want not_found", err)
	}
}

// TestAPI_Report: the grants with their last use for a viewer, the
// unused ones with ?unused=, and nothing for an agent.
func TestAPI_Report(t *testing.T) {
	e := newEnv(t)
	if err := e.svc.SetPolicy(ctx, loadPolicy(t), "test"); err != nil {
		t.Fatal(err)
	}
	e.clock.Add(48 * time.Hour)
	e.issue(reportBot, "report", "eu")

	all, err := e.as(viewer).Report(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(all.Grants) != 6 || !all.At.Equal(e.clock.Now()) {
		t.Fatalf("report = %+v; want the 6 grants of the test policy at %v", all, e.clock.Now())
	}
	g := all.Grants[0]
	if g.Agent != "spiffe://example.org/agent/report-*" || g.Template != "report" || g.LastAgent != reportBot.String() ||
		g.Agents != 1 || g.Idle != 0 || !g.LastUsed.Equal(e.clock.Now()) || g.Owner != "spiffe://example.org/ops/bob" {
		t.Fatalf("report-* × report = %+v", g)
	}
	unused, err := e.as(viewer).Report(ctx, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if len(unused.Grants) != 5 || unused.Unused.D() != 24*time.Hour {
		t.Fatalf("unused for a day: %+v; want the 5 grants never used in 2 days", unused)
	}
	for _, g := range unused.Grants {
		if !g.LastUsed.IsZero() || g.Idle.D() != 48*time.Hour {
			t.Fatalf("unused grant %+v; want never used, idle 48h", g)
		}
	}
	if _, err := e.as(reportBot).Report(ctx, 0); client.Code(err) != api.CodeForbidden {
		t.Fatalf("agent reading the report: %v; want forbidden", err)
	}
}
