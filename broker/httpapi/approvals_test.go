package httpapi_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/api"
	"github.com/latchbroker/latch/broker/client"
)

// pending asks for the high-risk ticket task as ticketBot and returns the
// pending approval.
func (e *env) pending(ticket string) api.Approval {
	e.t.Helper()
	res, err := e.as(ticketBot).Credentials(ctx, api.CredentialsRequest{Task: "ticket", Params: map[string]string{"ticket": ticket},
		Reason: "close ticket " + ticket, TraceID: "trace-" + ticket})
	if err != nil || res.Approval == nil {
		e.t.Fatalf("credentials = %+v, %v; want a pending approval", res, err)
	}
	return *res.Approval
}

// TestAPI_Approvals: operators list and show approvals with everything an
// approver needs; an agent sees only its own.
func TestAPI_Approvals(t *testing.T) {
	e := newEnv(t)
	a := e.pending("42")
	e.pending("43")

	for _, op := range []struct {
		name string
		c    *client.Client
	}{{"viewer", e.as(viewer)}, {"approver", e.as(approver)}, {"admin", e.as(admin)}} {
		t.Run("List/"+op.name, func(t *testing.T) {
			got, err := op.c.Approvals(ctx, api.ApprovalQuery{Status: api.ApprovalPending, Agent: ticketBot.String()})
			if err != nil || len(got.Approvals) != 2 || got.More {
				t.Fatalf("approvals = %+v, %v", got, err)
			}
			got, err = op.c.Approvals(ctx, api.ApprovalQuery{Limit: 1})
			if err != nil || len(got.Approvals) != 1 || !got.More {
				t.Fatalf("approvals limit 1 = %+v, %v", got, err)
			}
		})
	}
	t.Run("List/Filters", func(t *testing.T) {
		got, err := e.as(viewer).Approvals(ctx, api.ApprovalQuery{Status: api.ApprovalDenied})
		if err != nil || len(got.Approvals) != 0 {
			t.Fatalf("denied = %+v, %v", got, err)
		}
		got, err = e.as(viewer).Approvals(ctx, api.ApprovalQuery{Agent: reportBot.String()})
		if err != nil || len(got.Approvals) != 0 {
			t.Fatalf("reportBot's = %+v, %v", got, err)
		}
		if _, err := e.as(viewer).Approvals(ctx, api.ApprovalQuery{Status: "maybe"}); client.Code(err) != api.CodeInvalid {
			t.Fatalf("status=maybe: %v; want invalid", err)
		}
		if _, err := e.as(viewer).Approvals(ctx, api.ApprovalQuery{Agent: "bob"}); client.Code(err) != api.CodeInvalid {
			t.Fatalf("agent=bob: %v; want invalid", err)
		}
	})
	t.Run("List/ErrForbidden", func(t *testing.T) {
		for _, id := range []string{ticketBot.String(), revoker.String()} {
			c := e.as(ticketBot)
			if id == revoker.String() {
				c = e.as(revoker)
			}
			_, err := c.Approvals(ctx, api.ApprovalQuery{})
			if client.Code(err) != api.CodeForbidden || !strings.Contains(err.Error(), "viewer") {
				t.Fatalf("%s lists approvals: %v; want forbidden naming the viewer role", id, err)
			}
		}
	})
	t.Run("Show", func(t *testing.T) {
		got, err := e.as(approver).Approval(ctx, a.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != a.ID || got.Agent != ticketBot.String() || got.Owner != "spiffe://example.org/ops/bob" || got.Task != "ticket" ||
			got.Params["ticket"] != "42" || got.Reason != "close ticket 42" || got.TraceID != "trace-42" || got.TemplateVersion == "" ||
			got.Tier != "high" || len(got.Reasons) == 0 || got.TTL.D() != 5*time.Minute || got.Required != 1 || got.Status != api.ApprovalPending {
			t.Fatalf("approval = %+v", got)
		}
	})
	t.Run("Show/OwnAgent", func(t *testing.T) {
		if got, err := e.as(ticketBot).Approval(ctx, a.ID); err != nil || got.ID != a.ID {
			t.Fatalf("own approval = %+v, %v", got, err)
		}
	})
	t.Run("Show/ErrNotFound", func(t *testing.T) {
		if _, err := e.as(reportBot).Approval(ctx, a.ID); client.Code(err) != api.CodeNotFound {
			t.Fatalf("another agent's approval: %v; want not_found", err)
		}
		if _, err := e.as(viewer).Approval(ctx, "01JABCDEFGHJKMNPQRSTVWXYZ0"); client.Code(err) != api.CodeNotFound {
			t.Fatalf("unknown approval: %v; want not_found", err)
		}
		if _, err := e.as(viewer).Approval(ctx, "nope"); client.Code(err) != api.CodeInvalid {
			t.Fatalf("malformed ID: %v; want invalid", err)
		}
	})
	t.Run("Show/ErrBadWait", func(t *testing.T) {
		for _, w := range []string{"soon", "-1s"} {
			status, _, body := e.raw(viewer, "GET", "/v1/approvals/"+a.ID+"?wait="+w, "", nil)
			if status != http.StatusBadRequest || !strings.Contains(string(body), "wait") {
				t.Fatalf("wait=%s: %d %s", w, status, body)
			}
		}
	})
}

// TestAPI_ApprovalWait: a long poll returns as soon as the approval is
// decided, and as it stands when the wait ends.
func TestAPI_ApprovalWait(t *testing.T) {
	e := newEnv(t)
	a := e.pending("7")

	start := time.Now()
	got, err := e.as(ticketBot).WaitApproval(ctx, a.ID, 200*time.Millisecond)
	if err != nil || got.Status != api.ApprovalPending || time.Since(start) < 150*time.Millisecond {
		t.Fatalf("wait while pending = %+v, %v after %v", got, err, time.Since(start))
	}

	done := make(chan *api.Approval, 1)
	go func() {
		got, err := e.as(ticketBot).WaitApproval(ctx, a.ID, time.Minute)
		if err != nil {
			t.Error(err)
		}
		done <- got
	}()
	time.Sleep(100 * time.Millisecond)
	if _, err := e.as(approver).Approve(ctx, a.ID, "ticket checked"); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-done:
		if got == nil || got.Status != api.ApprovalApproved {
			t.Fatalf("wait = %+v; want approved", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the long poll did not return once approved")
	}

	// Another agent cannot wait on it either.
	if _, err := e.as(reportBot).WaitApproval(ctx, a.ID, time.Second); client.Code(err) != api.CodeNotFound {
		t.Fatalf("another agent waits: %v; want not_found", err)
	}
	// Then the agent picks it up.
	res, err := e.as(ticketBot).Credentials(ctx, api.CredentialsRequest{ApprovalID: a.ID})
	if err != nil || res.Lease.ApprovalID != a.ID {
		t.Fatalf("pickup = %+v, %v", res, err)
	}
}

// TestAPI_Review: approvers approve and deny with a reason; the rules are
// the Service's, and every review is audited.
func TestAPI_Review(t *testing.T) {
	e := newEnv(t)

	t.Run("Approve", func(t *testing.T) {
		a := e.pending("1")
		got, err := e.as(approver).Approve(ctx, a.ID, "looks right")
		if err != nil || got.Status != api.ApprovalApproved || len(got.Reviews) != 1 ||
			got.Reviews[0].Approver != approver.String() || got.Reviews[0].Reason != "looks right" || got.PickupBy.IsZero() {
			t.Fatalf("approve = %+v, %v", got, err)
		}
		if _, err := e.as(admin).Approve(ctx, a.ID, "me too"); client.Code(err) != api.CodeConflict {
			t.Fatalf("approve an approved one: %v; want conflict", err)
		}
		if !e.hasEvent(broker.EventApprovalApproved, a.ID) {
			t.Fatal("no approval_approved event")
		}
	})
	t.Run("Deny", func(t *testing.T) {
		a := e.pending("2")
		got, err := e.as(admin).Deny(ctx, a.ID, "not today")
		if err != nil || got.Status != api.ApprovalDenied || got.Reviews[0].Decision != "deny" {
			t.Fatalf("deny = %+v, %v", got, err)
		}
		if _, err := e.as(ticketBot).Credentials(ctx, api.CredentialsRequest{ApprovalID: a.ID}); client.Code(err) != api.CodeForbidden ||
			!strings.Contains(err.Error(), "not today") {
			t.Fatalf("pickup of a denied approval: %v", err)
		}
		if !e.hasEvent(broker.EventApprovalDenied, a.ID) {
			t.Fatal("no approval_denied event")
		}
	})
	t.Run("ErrNoReason", func(t *testing.T) {
		a := e.pending("3")
		for _, action := range []string{"approve", "deny"} {
			status, _, body := e.raw(approver, "POST", api.ApprovalPath(a.ID, action), "application/json", []byte(`{"reason":"  "}`))
			if status != http.StatusBadRequest || !strings.Contains(string(body), "reason") {
				t.Fatalf("%s without a reason: %d %s", action, status, body)
			}
			status, _, body = e.raw(approver, "POST", api.ApprovalPath(a.ID, action), "application/json", []byte(`{"reason":"x","extra":1}`))
			if status != http.StatusBadRequest {
				t.Fatalf("%s with an unknown field: %d %s", action, status, body)
			}
		}
	})
	t.Run("ErrForbidden", func(t *testing.T) {
		a := e.pending("4")
		for name, c := range map[string]*client.Client{"viewer": e.as(viewer), "revoker": e.as(revoker), "agent": e.as(ticketBot)} {
			if _, err := c.Approve(ctx, a.ID, "sure"); client.Code(err) != api.CodeForbidden {
				t.Errorf("%s approves: %v; want forbidden", name, err)
			}
			if _, err := c.Deny(ctx, a.ID, "no"); client.Code(err) != api.CodeForbidden {
				t.Errorf("%s denies: %v; want forbidden", name, err)
			}
		}
		if got, err := e.as(viewer).Approval(ctx, a.ID); err != nil || got.Status != api.ApprovalPending || len(got.Reviews) != 0 {
			t.Fatalf("after refused reviews = %+v, %v", got, err)
		}
	})
	t.Run("ErrNotFound", func(t *testing.T) {
		if _, err := e.as(approver).Approve(ctx, "01JABCDEFGHJKMNPQRSTVWXYZ0", "sure"); client.Code(err) != api.CodeNotFound {
			t.Fatalf("approve unknown: %v; want not_found", err)
		}
	})
}

// TestAPI_AdminSocketReview: the admin socket may read and deny approvals,
// never approve them.
func TestAPI_AdminSocketReview(t *testing.T) {
	e := newEnv(t)
	a, b := e.pending("5"), e.pending("6")
	path, _, _ := e.adminSocket(t)
	c := client.NewUnix(path)

	if got, err := c.Approvals(ctx, api.ApprovalQuery{Status: api.ApprovalPending}); err != nil || len(got.Approvals) != 2 {
		t.Fatalf("approvals = %+v, %v", got, err)
	}
	if _, err := c.Approve(ctx, a.ID, "break glass"); client.Code(err) != api.CodeForbidden || !strings.Contains(err.Error(), "person") {
		t.Fatalf("admin socket approves: %v; want forbidden", err)
	}
	got, err := c.Deny(ctx, b.ID, "break glass")
	if err != nil || got.Status != api.ApprovalDenied || got.Reviews[0].Approver != broker.AdminSocketActor {
		t.Fatalf("admin socket denies = %+v, %v", got, err)
	}
	if got, err := c.Approval(ctx, a.ID); err != nil || got.Status != api.ApprovalPending {
		t.Fatalf("after a refused approve = %+v, %v", got, err)
	}
}

func (e *env) hasEvent(typ broker.EventType, approvalID string) bool {
	for _, ev := range e.events() {
		if ev.Type == typ && ev.Details["approval_id"] == approvalID {
			return true
		}
	}
	return false
}
