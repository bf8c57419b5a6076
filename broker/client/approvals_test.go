package client_test

import (
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker/api"
	"github.com/latchbroker/latch/broker/client"
)

func TestClient_Approvals(t *testing.T) {
	const id = "01J00000000000000000000000"
	var gotBody string
	c, last := server(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		gotBody = string(b)
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/v1/approvals":
			fmt.Fprint(w, `{"approvals":[{"id":"`+id+`","status":"pending","rendered":{"policy":"path \"x\" {}"}}],"more":true}`)
		case "/v1/approvals/" + id + "/deny":
			w.WriteHeader(http.StatusConflict)
			fmt.Fprint(w, `{"error":{"code":"conflict","message":"approval is denied","reasons":[]}}`)
		default:
			fmt.Fprint(w, `{"approval":{"id":"`+id+`","status":"approved","ttl":"5m"}}`)
		}
	})

	list, err := c.Approvals(ctx, api.ApprovalQuery{Status: "pending", Agent: "spiffe://e/a", Limit: 3})
	if err != nil || len(list.Approvals) != 1 || !list.More || list.Approvals[0].Rendered.Policy != `path "x" {}` {
		t.Fatalf("approvals = %+v, %v", list, err)
	}
	if q := last.URL.Query(); last.Method != "GET" || q.Get("status") != "pending" || q.Get("agent") != "spiffe://e/a" || q.Get("limit") != "3" {
		t.Fatalf("list request = %s %v", last.Method, q)
	}

	a, err := c.Approval(ctx, id)
	if err != nil || a.Status != api.ApprovalApproved || a.TTL.D() != 5*time.Minute {
		t.Fatalf("approval = %+v, %v", a, err)
	}
	if last.URL.Path != "/v1/approvals/"+id || last.URL.RawQuery != "" {
		t.Fatalf("show went to %s?%s", last.URL.Path, last.URL.RawQuery)
	}

	if _, err := c.WaitApproval(ctx, id, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	if last.URL.Query().Get("wait") != "1m0s" {
		t.Fatalf("wait = %q", last.URL.RawQuery)
	}
	if _, err := c.WaitApproval(ctx, id, time.Hour); err != nil {
		t.Fatal(err)
	}
	if last.URL.Query().Get("wait") != api.MaxApprovalWait.String() {
		t.Fatalf("a wait over the cap = %q", last.URL.RawQuery)
	}

	if _, err := c.Approve(ctx, id, "checked"); err != nil {
		t.Fatal(err)
	}
	if last.Method != "POST" || last.URL.Path != "/v1/approvals/"+id+"/approve" || gotBody != `{"reason":"checked"}` {
		t.Fatalf("approve = %s %s %s", last.Method, last.URL.Path, gotBody)
	}
	if _, err := c.Deny(ctx, id, "no"); client.Code(err) != api.CodeConflict {
		t.Fatalf("deny: %v; want conflict", err)
	}
	if last.URL.Path != "/v1/approvals/"+id+"/deny" || gotBody != `{"reason":"no"}` {
		t.Fatalf("deny = %s %s", last.URL.Path, gotBody)
	}
}
