package server

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/latchbroker/latch/broker/api"
)

// Agents with limits, outside agent/* so that no other entry matches.
const (
	rateBot       = "spiffe://example.org/limited/rate-bot"
	budgetBot     = "spiffe://example.org/limited/budget-bot"
	limitedAgents = `  - id: ` + rateBot + `
    owner: spiffe://example.org/ops/bob
    templates: [close-ticket]
    rate: 2/m
  - id: ` + budgetBot + `
    owner: spiffe://example.org/ops/bob
    templates: [close-ticket]
    max_active: 1
`
)

// postHeader is post that also returns the response's header.
func postHeader(t testing.TB, hc *http.Client, url string, body string) (int, http.Header, string) {
	t.Helper()
	resp, err := hc.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

func TestServer_Limits(t *testing.T) {
	l := startLatchWith(t, latchOptions{Agents: limitedAgents})
	body := `{"task":"close-ticket","params":{"ticket":"42"},"reason":"limits test"}`
	for _, tc := range []struct {
		name, agent, reason string
		allowed             int
	}{
		{"Rate", rateBot, "rate_limited", 2},
		{"Budget", budgetBot, "agent_budget", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hc := l.tlsClient(tc.agent)
			for i := range tc.allowed {
				if status, _, resp := postHeader(t, hc, l.api+"/v1/credentials", body); status != http.StatusOK {
					t.Fatalf("request %d = %d %s, want 200", i+1, status, resp)
				}
			}
			status, h, resp := postHeader(t, hc, l.api+"/v1/credentials", body)
			if status != http.StatusTooManyRequests {
				t.Fatalf("request over the limit = %d %s, want 429", status, resp)
			}
			if s, err := strconv.Atoi(h.Get("Retry-After")); err != nil || s <= 0 {
				t.Fatalf("Retry-After = %q, want a positive number of seconds", h.Get("Retry-After"))
			}
			if !strings.Contains(resp, `"code":"`+api.CodeLimit+`"`) || (tc.reason != "" && !strings.Contains(resp, tc.reason)) {
				t.Fatalf("429 body = %s, want code %s and reason %q", resp, api.CodeLimit, tc.reason)
			}
		})
	}
}
