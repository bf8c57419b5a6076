package broker_test

import (
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
)

// TestApplyReview: the review as a pure transition, without a store.
func TestApplyReview(t *testing.T) {
	at := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	pending := func() *broker.Approval {
		return &broker.Approval{ID: "A1", Asked: broker.Asked{Agent: "agent", Task: "ticket"}, Owner: "owner", Required: 2, Status: broker.ApprovalPending,
			Reviews: []broker.Review{{Approver: "first", Decision: broker.ReviewApprove}}}
	}
	review := func(who string, d broker.ReviewDecision) broker.Review {
		return broker.Review{Approver: who, Decision: d, Reason: "why", At: at}
	}
	tests := []struct {
		name   string
		a      *broker.Approval
		r      broker.Review
		owner  string
		code   string
		status broker.ApprovalStatus
		event  broker.EventType
	}{
		{"Quorum", pending(), review("second", broker.ReviewApprove), "", "", broker.ApprovalApproved, broker.EventApprovalApproved},
		{"Deny", pending(), review("second", broker.ReviewDeny), "", "", broker.ApprovalDenied, broker.EventApprovalDenied},
		{"ErrSelf", pending(), review("agent", broker.ReviewApprove), "", broker.EFORBIDDEN, "", ""},
		{"ErrOwnerThen", pending(), review("owner", broker.ReviewApprove), "", broker.EFORBIDDEN, "", ""},
		{"ErrOwnerNow", pending(), review("new-owner", broker.ReviewApprove), "new-owner", broker.EFORBIDDEN, "", ""},
		{"OwnerMayDeny", pending(), review("owner", broker.ReviewDeny), "", "", broker.ApprovalDenied, broker.EventApprovalDenied},
		{"ErrTwice", pending(), review("first", broker.ReviewApprove), "", broker.ECONFLICT, "", ""},
		{"ErrClosed", &broker.Approval{ID: "A2", Status: broker.ApprovalDenied}, review("second", broker.ReviewApprove), "", broker.ECONFLICT, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(tt.a.Reviews)
			next, ev, err := broker.ApplyReview(tt.a, tt.r, tt.owner, 15*time.Minute)
			if broker.ErrorCode(err) != tt.code {
				t.Fatalf("err = %v, want code %q", err, tt.code)
			}
			if len(tt.a.Reviews) != before {
				t.Fatal("ApplyReview changed its input")
			}
			if err != nil {
				return
			}
			if next.Status != tt.status || ev.Type != tt.event || ev.Actor != tt.r.Approver {
				t.Fatalf("next = %s, event %s by %s; want %s, %s", next.Status, ev.Type, ev.Actor, tt.status, tt.event)
			}
			if tt.status == broker.ApprovalApproved && !next.PickupBy.Equal(at.Add(15*time.Minute)) {
				t.Fatalf("pickup by %s", next.PickupBy)
			}
		})
	}
}
