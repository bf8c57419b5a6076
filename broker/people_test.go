package broker_test

import (
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/brokertest"
)

const peoplePolicy = `operators:
  - { group: approvers, roles: [approver] }
  - { email: ada@example.org, roles: [admin] }
  - { subject: u-vera, roles: [viewer] }
agents:
  - { id: spiffe://example.org/agent/*, owner: bob@example.org, templates: [t] }
`

var peopleTemplates = map[string]string{"t.yaml": "name: t\nbackend: fake\nttl: 5m\nrisk: low\n"}

func person(sub, email string, groups ...string) *broker.Person {
	return &broker.Person{Issuer: "https://idp.example.org/", Subject: sub, Email: email, Groups: groups}
}

// A person's roles come from their groups, verified email and subject;
// a person is never an agent, and one no entry names may do nothing.
func TestAuthorizePerson(t *testing.T) {
	p := brokertest.LoadPolicy(t, peoplePolicy, peopleTemplates)
	actions := []broker.Action{broker.ActionAgent, broker.ActionRead, broker.ActionStop, broker.ActionApprove,
		broker.ActionDeny, broker.ActionReopen, broker.ActionIdentified}
	tests := []struct {
		who  *broker.Person
		want []bool // agent read stop approve deny reopen identified
	}{
		{person("u-carol", "carol@example.org", "approvers"), []bool{false, false, false, true, true, false, true}},
		{person("u-ada", "ada@example.org"), []bool{false, true, true, true, true, true, true}},
		{person("u-vera", ""), []bool{false, true, false, false, false, false, true}},
		{person("u-eve", "eve@example.org", "engineers"), []bool{false, false, false, false, false, false, true}},
	}
	for _, tt := range tests {
		for i, a := range actions {
			err := broker.AuthorizePerson(p, tt.who, a, "")
			if (err == nil) != tt.want[i] {
				t.Errorf("AuthorizePerson(%s, %s) = %v, want allowed=%v", tt.who.ID(), a, err, tt.want[i])
			}
		}
	}
	// The person's ID, the string alone, holds no role: roles need the
	// person (their groups), as the console and latch login pass it.
	if err := broker.Authorize(p, person("u-ada", "ada@example.org").ID(), broker.ActionRead, ""); err == nil {
		t.Error("a person's ID alone was authorized as an operator")
	}
}

// The owner rule holds for a person named by email: bob, the agents'
// owner, can never approve their requests; carol can, and her email is
// kept with her review.
func TestApplyReview_PersonOwner(t *testing.T) {
	now := time.Now()
	a := &broker.Approval{ID: "01J", Asked: broker.Asked{Agent: "spiffe://example.org/agent/x", Task: "t"}, Owner: "bob@example.org",
		Required: 1, Status: broker.ApprovalPending, ExpiresAt: now.Add(time.Hour)}
	bob := person("u-bob", "bob@example.org", "approvers")
	_, _, err := broker.ApplyReview(a, broker.Review{Approver: bob.ID(), Email: "BOB@example.org", Decision: broker.ReviewApprove, Reason: "mine", At: now},
		"bob@example.org", time.Minute)
	if broker.ErrorCode(err) != broker.EFORBIDDEN {
		t.Fatalf("the owner's approval by email: %v, want forbidden", err)
	}
	carol := person("u-carol", "carol@example.org", "approvers")
	next, ev, err := broker.ApplyReview(a, broker.Review{Approver: carol.ID(), Email: carol.Email, Decision: broker.ReviewApprove, Reason: "ok", At: now},
		"bob@example.org", time.Minute)
	if err != nil || next.Status != broker.ApprovalApproved || ev.Actor != carol.ID() || ev.Details["actor_email"] != "carol@example.org" {
		t.Fatalf("carol's approval: %v %+v %+v", err, next, ev)
	}
}
