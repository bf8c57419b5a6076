package broker_test

import (
	"testing"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/brokertest"
)

// TestAuthorize is the whole table of who may do what.
func TestAuthorize(t *testing.T) {
	p := brokertest.LoadTestPolicy(t)
	const (
		revoker  = "spiffe://example.org/ops/alice"
		viewer   = "spiffe://example.org/ops/vera"
		admin    = "spiffe://example.org/ops/ada"
		approver = "spiffe://example.org/ops/abe"
		stranger = "spiffe://example.org/agent/report-bot"
	)
	actions := []broker.Action{broker.ActionAgent, broker.ActionRead, broker.ActionStop, broker.ActionApprove,
		broker.ActionDeny, broker.ActionReopen, broker.ActionIdentified}
	allowed := map[string][]bool{
		// agent  read   stop   approve deny   reopen identified
		broker.AdminSocketActor: {false, true, true, false, true, false, true},
		admin:                   {true, true, true, true, true, true, true},
		revoker:                 {true, false, true, false, false, false, true},
		viewer:                  {true, true, false, false, false, false, true},
		approver:                {true, false, false, true, true, false, true},
		stranger:                {true, false, false, false, false, false, true},
	}
	for actor, want := range allowed {
		for i, a := range actions {
			err := broker.Authorize(p, actor, a, "")
			if (err == nil) != want[i] {
				t.Errorf("Authorize(%s, %s) = %v, want allowed=%v", actor, a, err, want[i])
			}
			if err != nil && broker.ErrorCode(err) != broker.EFORBIDDEN {
				t.Errorf("Authorize(%s, %s) = %v, want forbidden", actor, a, err)
			}
		}
	}
	if err := broker.Authorize(p, broker.AdminSocketActor, broker.ActionReopen, ""); err == nil ||
		err.(*broker.Error).Reasons[0] != "admin_socket_reopen" {
		t.Errorf("admin socket reopen: %v, want admin_socket_reopen", err)
	}
}
