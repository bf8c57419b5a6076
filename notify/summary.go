package notify

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/latchbroker/latch/broker"
)

// render builds a delivery's body.
func render(e broker.Event, slack bool) ([]byte, error) {
	text := Summary(e)
	if slack {
		return json.Marshal(struct {
			Text string `json:"text"`
		}{text})
	}
	return json.Marshal(Payload{Seq: e.Seq, Time: e.Time.UTC(), Type: string(e.Type), Actor: e.Actor, Subject: e.Subject,
		Task: e.Task, Lease: e.Lease, Outcome: e.Outcome, Reasons: e.Reasons, Details: e.Details, Text: text})
}

// Summary is the one-line text of an event, as in Slack messages.
func Summary(e broker.Event) string {
	var b strings.Builder
	b.WriteString("latch: ")
	d := e.Details
	switch e.Type {
	case broker.EventApprovalRequested:
		fmt.Fprintf(&b, "approval requested: %s asks for task %s", e.Actor, e.Task)
		if d["approval_id"] != "" {
			fmt.Fprintf(&b, " (approval %s, %s approval(s) needed by %s)", d["approval_id"], d["required"], d["expires_at"])
		}
	case broker.EventAlert:
		fmt.Fprintf(&b, "alert: %s was issued task %s at tier %s (lease %s)", e.Actor, e.Task, d["tier"], e.Lease)
		if why := d["tier_why"]; why != "" {
			fmt.Fprintf(&b, " because %s", why)
		}
	case broker.EventApprovalApproved, broker.EventApprovalDenied, broker.EventApprovalExpired, broker.EventApprovalReview:
		fmt.Fprintf(&b, "%s", strings.ReplaceAll(string(e.Type), "_", " "))
		if id := d["approval_id"]; id != "" {
			fmt.Fprintf(&b, ": approval %s", id)
		}
		if e.Task != "" {
			fmt.Fprintf(&b, " for task %s", e.Task)
		}
		if e.Subject != "" {
			fmt.Fprintf(&b, " of %s", e.Subject)
		}
		if e.Actor != "" {
			fmt.Fprintf(&b, " by %s", e.Actor)
		}
	default:
		b.WriteString(string(e.Type))
		if e.Subject != "" {
			fmt.Fprintf(&b, ": %s", e.Subject)
		} else if e.Actor != "" {
			fmt.Fprintf(&b, ": %s", e.Actor)
		}
		if e.Task != "" {
			fmt.Fprintf(&b, " task %s", e.Task)
		}
		if e.Lease != "" {
			fmt.Fprintf(&b, " lease %s", e.Lease)
		}
		if e.Actor != "" && e.Subject != "" {
			fmt.Fprintf(&b, " by %s", e.Actor)
		}
	}
	if e.Outcome != "" {
		fmt.Fprintf(&b, " [%s]", e.Outcome)
	}
	if len(e.Reasons) > 0 {
		fmt.Fprintf(&b, " reasons: %s", strings.Join(e.Reasons, ", "))
	}
	if r := d["reason"]; r != "" {
		fmt.Fprintf(&b, " — %q", r)
	}
	return b.String()
}
