package broker

import (
	"strconv"
	"testing"
	"time"
)

func TestCoalescer(t *testing.T) {
	t0 := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	c := newCoalescer(time.Minute, 3)
	ev := func(actor, reason string) Event {
		return Event{Type: EventViolation, Actor: actor, Reasons: []string{reason}, Details: map[string]string{"endpoint": "POST /v1/credentials"}}
	}
	written := 0
	for i := range 50 {
		if c.admit(ev("flood", "unknown_agent"), t0.Add(time.Duration(i)*time.Second/2)) {
			written++
		}
	}
	// Others are not held back by the flood, and a window's first events
	// are written whatever the reason's suffix.
	for _, e := range []Event{ev("other", "unknown_agent"), ev("flood", "task_not_granted"), {Type: EventDeny, Actor: "flood", Reasons: []string{"unknown_agent"}}} {
		if !c.admit(e, t0.Add(time.Second)) {
			t.Fatalf("%+v was counted, want written: another caller, reason or type", e)
		}
	}
	if written != 3 {
		t.Fatalf("%d of 50 refusals written within the window, want 3", written)
	}
	if got := c.due(t0.Add(59 * time.Second)); len(got) != 0 {
		t.Fatalf("summaries before the window ended: %+v", got)
	}
	got := c.due(t0.Add(time.Minute))
	if len(got) != 1 {
		t.Fatalf("summaries = %+v, want the flood's one", got)
	}
	s := got[0]
	if s.Outcome != OutcomeCoalesced || s.Actor != "flood" || s.Details["count"] != strconv.Itoa(47) || s.Details["endpoint"] != "POST /v1/credentials" ||
		s.Details["from"] != t0.Format(time.RFC3339Nano) || s.Details["until"] != t0.Add(time.Minute).Format(time.RFC3339Nano) {
		t.Fatalf("summary = %+v", s)
	}
	// A new window after it: written again, one by one.
	if !c.admit(ev("flood", "unknown_agent"), t0.Add(61*time.Second)) {
		t.Fatal("the first refusal of a new window was counted")
	}
	// A window that ends while refusals keep coming is summed up at once.
	for i := range 10 {
		c.admit(ev("flood", "unknown_agent"), t0.Add(62*time.Second+time.Duration(i)))
	}
	c.admit(ev("flood", "unknown_agent"), t0.Add(122*time.Second))
	if got := c.due(t0.Add(122 * time.Second)); len(got) != 1 || got[0].Details["count"] != "8" {
		t.Fatalf("summary of a window closed by a later refusal = %+v, want a count of 8", got)
	}
}
