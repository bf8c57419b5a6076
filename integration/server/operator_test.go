package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker/api"
	"github.com/latchbroker/latch/integration/vaultenv"
)

func TestServer_Operators(t *testing.T) {
	l := startLatch(t)
	e := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	agent := agentPrefix + "revoke-bot"
	c := l.client(agent)
	tok := fetch(ctx, t, c, "close-ticket", map[string]string{"ticket": "42"})
	db := fetch(ctx, t, c, "nightly-report", map[string]string{"region": "eu"})

	t.Run("ViewerCannotRevoke", func(t *testing.T) {
		_, err := l.client(viewer).Revoke(ctx, api.RevokeRequest{Agent: agent, Reason: "test"})
		denied(t, err, http.StatusForbidden, api.CodeForbidden, "")
		if lease, err := l.admin().Lease(ctx, tok.Lease.ID); err != nil || lease.State != api.StateActive {
			t.Fatalf("lease after a refused revoke = %+v, %v", lease, err)
		}
	})
	t.Run("RevokerRevokesAgent", func(t *testing.T) {
		res, err := l.client(revoker).Revoke(ctx, api.RevokeRequest{Agent: agent, Reason: "leaked"})
		if err != nil {
			t.Fatal(err)
		}
		if res.Count != 2 {
			t.Fatalf("revoke --agent hit %d leases, want 2", res.Count)
		}
		vc, err := e.ClientWithToken(tok.Secret["token"])
		if err != nil {
			t.Fatal(err)
		}
		vaultenv.Eventually(t, 30*time.Second, func() error {
			if _, err := vc.Auth().Token().LookupSelfWithContext(ctx); vaultenv.StatusOf(err) != http.StatusForbidden {
				return fmt.Errorf("the agent's token still answers: %v", err)
			}
			if _, err := e.PGLogin(ctx, db.Secret["username"], db.Secret["password"]); err == nil {
				return errors.New("the agent's PostgreSQL login still works")
			}
			for _, id := range []string{tok.Lease.ID, db.Lease.ID} {
				lease, err := l.admin().Lease(ctx, id)
				if err != nil {
					return err
				}
				if lease.State != api.StateRevoked {
					return fmt.Errorf("lease %s is %s", id, lease.State)
				}
			}
			return nil
		})
	})
	t.Run("QuarantineBlocksNextFetch", func(t *testing.T) {
		bot := agentPrefix + "quarantine-bot"
		qc := l.client(bot)
		fetch(ctx, t, qc, "close-ticket", map[string]string{"ticket": "43"})
		if _, err := l.admin().QuarantineAgent(ctx, bot, "test"); err != nil {
			t.Fatal(err)
		}
		_, err := qc.Credentials(ctx, api.CredentialsRequest{Task: "close-ticket", Params: map[string]string{"ticket": "43"}, Reason: "test"})
		denied(t, err, http.StatusForbidden, api.CodeForbidden, "agent_quarantined")
	})
}
