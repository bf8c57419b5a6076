package server

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/latchbroker/latch/attest"
	"github.com/latchbroker/latch/attest/attesttest"
	"github.com/latchbroker/latch/broker/api"
)

func TestServer_Denials(t *testing.T) {
	l := startLatch(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	agent := agentPrefix + "deny-bot"
	c := l.client(agent)

	for _, tc := range []struct {
		name, task string
		params     map[string]string
		reason     string
	}{
		{"UnknownTask", "no-such-task", nil, "unknown_task"},
		{"ParamConstraint", "close-ticket", map[string]string{"ticket": "42; drop"}, "param_constraint"},
		{"TaskNotGranted", "deploy", nil, "task_not_granted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Credentials(ctx, api.CredentialsRequest{Task: tc.task, Params: tc.params, Reason: "test"})
			denied(t, err, http.StatusForbidden, api.CodeForbidden, tc.reason)
		})
	}

	body := []byte(`{"task":"close-ticket","params":{"ticket":"42"},"reason":"test"}`)
	t.Run("JWTForAnotherAudience", func(t *testing.T) {
		tok, err := st.SPIRE.MintJWTSVID(ctx, spiffeid.RequireFromString(agent), 5*time.Minute, "spiffe://example.org/not-latch")
		if err != nil {
			t.Fatal(err)
		}
		status, resp := post(t, l.tlsClient(""), l.api+"/v1/credentials", body, http.Header{"Authorization": {"Bearer " + tok}})
		if status != http.StatusUnauthorized || !strings.Contains(resp, "wrong_audience") {
			t.Fatalf("POST with a JWT-SVID for another audience = %d %s, want 401 wrong_audience", status, resp)
		}
	})
	t.Run("JWTForLatch", func(t *testing.T) {
		// The control: the same kind of token for latch's audience works.
		tok, err := st.SPIRE.MintJWTSVID(ctx, spiffeid.RequireFromString(agent), 5*time.Minute, latchID.String())
		if err != nil {
			t.Fatal(err)
		}
		status, resp := post(t, l.tlsClient(""), l.api+"/v1/credentials", body, http.Header{"Authorization": {"Bearer " + tok}})
		if status != http.StatusOK {
			t.Fatalf("POST with a JWT-SVID for latch = %d %s, want 200", status, resp)
		}
	})
	t.Run("ForeignTrustDomain", func(t *testing.T) {
		foreign := attesttest.New(t, spiffeid.RequireTrustDomainFromString("evil.example"))
		svid := foreign.X509SVID(spiffeid.RequireFromString("spiffe://evil.example/agent/deny-bot"))
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = attest.ClientTLSConfig(svid, l.bundle(), latchID)
		status, resp, err := tryPost(&http.Client{Transport: tr, Timeout: 30 * time.Second}, l.api+"/v1/credentials", body)
		if err != nil {
			t.Fatalf("POST with a foreign SVID: %v, want a 401 answer", err)
		}
		if status != http.StatusUnauthorized || !strings.Contains(resp, "foreign_trust_domain") {
			t.Fatalf("POST with a foreign SVID = %d %s, want 401 foreign_trust_domain", status, resp)
		}
	})
	t.Run("UntrustedX509SVID", func(t *testing.T) {
		// Latch's own trust domain, but a CA that is not in its bundle.
		ca := attesttest.New(t, latchID.TrustDomain())
		svid := ca.X509SVID(spiffeid.RequireFromString(agent))
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = attest.ClientTLSConfig(svid, l.bundle(), latchID)
		status, resp, err := tryPost(&http.Client{Transport: tr, Timeout: 30 * time.Second}, l.api+"/v1/credentials", body)
		if err != nil {
			t.Fatalf("POST with an untrusted SVID: %v, want a 401 answer", err)
		}
		if status != http.StatusUnauthorized || !strings.Contains(resp, `"code":"unauthorized"`) {
			t.Fatalf("POST with an untrusted SVID = %d %s, want 401", status, resp)
		}
	})
}

// TestServer_ExpiredJWT waits out a JWT-SVID's lifetime and latch's clock
// skew (30 s): it runs in parallel with the other parallel tests.
func TestServer_ExpiredJWT(t *testing.T) {
	t.Parallel()
	l := startLatch(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	agent := spiffeid.RequireFromString(agentPrefix + "late-bot")
	tok, err := st.SPIRE.MintJWTSVID(ctx, agent, 2*time.Second, latchID.String())
	if err != nil {
		t.Fatal(err)
	}
	hc := l.tlsClient("")
	// A task the agent is not granted: 403 while the token is valid, and
	// nothing minted that TestServer_Kill9, running alongside, would see.
	body := []byte(`{"task":"deploy","reason":"test"}`)
	bearer := http.Header{"Authorization": {"Bearer " + tok}}
	deadline := time.Now().Add(50 * time.Second)
	for {
		status, resp := post(t, hc, l.api+"/v1/credentials", body, bearer)
		if status != http.StatusUnauthorized && status != http.StatusForbidden {
			t.Fatalf("POST with a JWT-SVID = %d %s, want 403 while valid, 401 once expired", status, resp)
		}
		if status == http.StatusUnauthorized {
			if !strings.Contains(resp, "expired") {
				t.Fatalf("POST with an expired JWT-SVID = %d %s, want 401 expired", status, resp)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("a JWT-SVID with a 2s lifetime still accepted after 50s: %d %s", status, resp)
		}
		time.Sleep(2 * time.Second)
	}
}
