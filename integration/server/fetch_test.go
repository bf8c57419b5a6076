package server

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker/api"
	"github.com/latchbroker/latch/broker/client"
	"github.com/latchbroker/latch/integration/vaultenv"
)

// fetch asks for task as c and fails the test unless it is issued.
func fetch(ctx context.Context, t testing.TB, c *client.Client, task string, params map[string]string) *api.CredentialsResponse {
	t.Helper()
	res, err := c.Credentials(ctx, api.CredentialsRequest{Task: task, Params: params, Reason: "integration test"})
	if err != nil {
		t.Fatalf("fetch %s %v: %v", task, params, err)
	}
	if res.Lease.ID == "" || len(res.Secret) == 0 {
		t.Fatalf("fetch %s: no lease or secret: %+v", task, res.Lease)
	}
	return res
}

// denied checks that err is a latch error with status and a reason code.
func denied(t testing.TB, err error, status int, code, reason string) {
	t.Helper()
	e, ok := errors.AsType[*client.Error](err)
	if !ok {
		t.Fatalf("err = %v, want a %d %s", err, status, reason)
	}
	if e.Status != status || e.Code != code || (reason != "" && !slices.Contains(e.Reasons, reason)) {
		t.Fatalf("err = %v, want %d %s (%s)", e, status, code, reason)
	}
	if e.Message == "" {
		t.Fatalf("err = %v: no message", e)
	}
}

func TestServer_Fetch(t *testing.T) {
	l := startLatch(t)
	e := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := l.client(agentPrefix + "support-bot")

	t.Run("VaultToken", func(t *testing.T) {
		res := fetch(ctx, t, c, "close-ticket", map[string]string{"ticket": "42"})
		if res.Lease.State != api.StateActive || res.Lease.Refs.TokenAccessor == "" {
			t.Fatalf("lease = %+v", res.Lease)
		}
		vc, err := e.ClientWithToken(res.Secret["token"])
		if err != nil {
			t.Fatal(err)
		}
		s, err := vc.KVv2("secret").Get(ctx, "tickets/42")
		if err != nil || s.Data["body"] != "ticket 42" {
			t.Fatalf("read tickets/42 = %v, %v", s, err)
		}
		if _, err := vc.KVv2("secret").Get(ctx, "tickets/43"); vaultenv.StatusOf(err) != http.StatusForbidden {
			t.Fatalf("read tickets/43 = %v, want 403", err)
		}
	})
	t.Run("VaultLease", func(t *testing.T) {
		res := fetch(ctx, t, c, "nightly-report", map[string]string{"region": "eu"})
		user := res.Secret["username"]
		who, err := e.PGLogin(ctx, user, res.Secret["password"])
		if err != nil || who != user {
			t.Fatalf("PostgreSQL login as %q: %q, %v", user, who, err)
		}
		if res.Lease.Refs.VaultLeaseID == "" {
			t.Fatalf("lease = %+v", res.Lease)
		}
	})
}
