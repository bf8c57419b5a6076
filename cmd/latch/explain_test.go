package main

import (
	"encoding/json"
	"strings"
	"testing"
)

const exReportBot = "spiffe://example.org/agent/report-bot"

// explainJSON runs latch explain -o json against the example config.
func explainJSON(t *testing.T, args ...string) map[string]any {
	t.Helper()
	base := []string{"explain", "--config", exampleConfigPath, "-o", "json"}
	out, errOut, err := runLatch(t, append(base, args...)...)
	if err != nil {
		t.Fatalf("err = %v\n%s", err, errOut)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, out)
	}
	return m
}

// The acceptance scenarios of the example config's nightly-report task.
func TestExplain_NightlyReport(t *testing.T) {
	t.Run("inside billing-close denies with the window and next allowed time", func(t *testing.T) {
		out, _, err := runLatch(t, "explain", "--config", exampleConfigPath, "--agent", exReportBot, "--task", "nightly-report",
			"--param", "region=eu", "--at", "2026-12-29T10:00:00+01:00")
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{
			"outcome          deny\n",
			"next allowed at  2027-01-02T00:00:00+01:00\n",
			"frozen  nightly-report is frozen during window billing-close",
			"window.billing-close    deny    billing-close is active; changes at 2027-01-02T00:00:00+01:00",
			"path  database/creds/report-eu",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
		m := explainJSON(t, "--agent", exReportBot, "--task", "nightly-report", "--param", "region=eu", "--at", "2026-12-29T10:00:00+01:00")
		reason := m["reasons"].([]any)[0].(map[string]any)
		if m["outcome"] != "deny" || m["next_allowed_at"] != "2027-01-02T00:00:00+01:00" ||
			reason["code"] != "frozen" || reason["window"] != "billing-close" {
			t.Fatalf("json = %v", m)
		}
	})
	t.Run("outside the window allows", func(t *testing.T) {
		m := explainJSON(t, "--agent", exReportBot, "--task", "nightly-report", "--param", "region=eu", "--at", "2026-12-15T10:00:00+01:00")
		if m["outcome"] != "allow" || m["tier"] != "low" || m["ttl"] != "10m0s" || m["ttl_seconds"] != 600.0 {
			t.Fatalf("json = %v", m)
		}
		if _, ok := m["next_allowed_at"]; ok {
			t.Fatalf("next_allowed_at on allow: %v", m)
		}
		if r := m["rendered"].(map[string]any); r["path"] != "database/creds/report-eu" {
			t.Fatalf("rendered = %v", r)
		}
	})
	t.Run("outside business hours needs approval", func(t *testing.T) {
		m := explainJSON(t, "--agent", exReportBot, "--task", "nightly-report", "--param", "region=eu", "--at", "2026-12-15T20:00:00+01:00")
		reason := m["reasons"].([]any)[0].(map[string]any)
		if m["outcome"] != "approval_required" || m["approvals"] != 1.0 || reason["code"] != "window_approval" || reason["window"] != "business-hours" {
			t.Fatalf("json = %v", m)
		}
	})
}

func TestExplain_Table(t *testing.T) {
	out, _, err := runLatch(t, "explain", "-c", exampleConfigPath, "--agent", "spiffe://example.org/agent/payments-bot", "--task", "refund-payment",
		"-p", "order=ord_12345678901", "-p", "currency=EUR", "--at", "2026-12-15T10:00:00+01:00", "--ttl", "1h")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"outcome       approval_required\n",
		"tier          critical (base risk critical)\n",
		"approvals     2\n",
		"ttl           15m (max 15m)\n",
		"tier_approval  risk tier critical needs 2 approvals\n",
		"  policy:\n    path \"payments/refunds/EUR/ord_12345678901\" {\n",
		"  RULE                  RESULT    DETAIL\n",
		"  ttl                   pass      requested 1h, clamped to tier critical max_ttl 15m\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestExplain_OtherTemplates(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		outcome string
		tier    string
		check   func(t *testing.T, m map[string]any)
	}{
		{"close-ticket renders a policy", []string{"--agent", "spiffe://example.org/agent/support-bot", "--task", "close-ticket", "--param", "ticket=4711"},
			"approval_required", "high", func(t *testing.T, m map[string]any) {
				if p := m["rendered"].(map[string]any)["policy"].(string); !strings.Contains(p, `path "secret/data/tickets/4711"`) {
					t.Fatalf("policy = %q", p)
				}
			}},
		{"service-cert renders names", []string{"--agent", "spiffe://example.org/agent/deployer", "--task", "service-cert", "--param", "service=search"},
			"allow", "low", func(t *testing.T, m map[string]any) {
				n := m["rendered"].(map[string]any)["names"].(map[string]any)
				if n["common_name"] != "search.eu.svc.example.org" || n["uri_sans"].([]any)[0] != "spiffe://example.org/service/search" {
					t.Fatalf("names = %v", n)
				}
			}},
		{"deploy to staging", []string{"--agent", "spiffe://example.org/agent/deployer", "--task", "deploy-service", "--param", "service=search"},
			"allow", "medium", func(t *testing.T, m map[string]any) {
				if r := m["rendered"].(map[string]any); r["path"] != "aws/creds/deploy-staging-search" {
					t.Fatalf("rendered = %v", r)
				}
			}},
		{"deploy to production needs approval", []string{"--agent", "spiffe://example.org/agent/deployer", "--task", "deploy-service", "--param", "service=search", "--param", "env=production"},
			"approval_required", "high", nil},
		{"deploy to production at night needs two", []string{"--agent", "spiffe://example.org/agent/deployer", "--task", "deploy-service", "--param", "service=search", "--param", "env=production", "--at", "2026-12-15T23:00:00+01:00"},
			"approval_required", "critical", func(t *testing.T, m map[string]any) {
				if m["approvals"] != 2.0 {
					t.Fatalf("approvals = %v", m["approvals"])
				}
			}},
		{"year-end freeze", []string{"--agent", "spiffe://example.org/agent/deployer", "--task", "deploy-service", "--param", "service=search", "--at", "2026-12-22T10:00:00+01:00"},
			"deny", "medium", func(t *testing.T, m map[string]any) {
				if m["next_allowed_at"] != "2027-01-04T00:00:00+01:00" {
					t.Fatalf("next_allowed_at = %v", m["next_allowed_at"])
				}
			}},
		{"unknown agent", []string{"--agent", "spiffe://example.org/agent/nobody", "--task", "close-ticket", "--param", "ticket=1"},
			"deny", "high", nil},
		{"paused agent", []string{"--agent", "spiffe://example.org/agent/support-bot", "--task", "close-ticket", "--param", "ticket=1", "--state", "paused"},
			"deny", "high", nil},
		{"global freeze", []string{"--agent", "spiffe://example.org/agent/support-bot", "--task", "close-ticket", "--param", "ticket=1", "--global-freeze"},
			"deny", "high", nil},
		{"app-config names a subtree", []string{"--agent", "spiffe://example.org/agent/deployer", "--task", "app-config", "--param", "app=billing/api"},
			"allow", "medium", func(t *testing.T, m map[string]any) {
				if p := m["rendered"].(map[string]any)["policy"].(string); !strings.Contains(p, `path "secret/data/apps/billing/api"`) {
					t.Fatalf("policy = %s", p)
				}
			}},
		{"app-config cannot climb out of its subtree", []string{"--agent", "spiffe://example.org/agent/deployer", "--task", "app-config", "--param", "app=billing/../../sys"},
			"deny", "medium", func(t *testing.T, m map[string]any) {
				if r := m["reasons"].([]any)[0].(map[string]any); r["code"] != "param_constraint" || !strings.Contains(r["message"].(string), `the path segment ".."`) {
					t.Fatalf("reason = %v", r)
				}
			}},
		{"parameter values may contain commas and =", []string{"--agent", "spiffe://example.org/agent/support-bot", "--task", "close-ticket", "--param", "ticket=1,2=3"},
			"deny", "high", func(t *testing.T, m map[string]any) {
				if r := m["reasons"].([]any)[0].(map[string]any); r["code"] != "param_constraint" || !strings.Contains(r["message"].(string), `"1,2=3"`) {
					t.Fatalf("reason = %v", r)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if !strings.Contains(strings.Join(args, " "), "--at") {
				args = append(args, "--at", "2026-12-15T10:00:00+01:00")
			}
			m := explainJSON(t, args...)
			if m["outcome"] != tt.outcome || m["tier"] != tt.tier {
				t.Fatalf("outcome %v tier %v; %v", m["outcome"], m["tier"], m["reasons"])
			}
			if tt.check != nil {
				tt.check(t, m)
			}
		})
	}
}

func TestExplain_FlagErrors(t *testing.T) {
	base := []string{"explain", "--config", exampleConfigPath, "--agent", exReportBot, "--task", "nightly-report"}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"bad at", []string{"--at", "tomorrow"}, `--at: expected an RFC 3339 time such as 2026-12-29T10:00:00+01:00, got "tomorrow"`},
		{"bad param", []string{"--param", "region"}, `invalid value "region" for flag -param: expected key=value, got "region"`},
		{"duplicate param", []string{"--param", "region=eu", "--param", "region=us"}, `invalid value "region=us" for flag -param: parameter "region" given twice`},
		{"bad state", []string{"--state", "asleep"}, `--state: expected active, paused or quarantined, got "asleep"`},
		{"bad output", []string{"-o", "yaml"}, `--output: expected table or json, got "yaml"`},
		{"argument", []string{"region=eu"}, `unexpected argument "region=eu": explain takes only flags; usage: latch explain --config FILE --agent ID --task T [--param k=v]... [--at RFC3339] [--ttl D] [-o json]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := runLatch(t, append(base, tt.args...)...)
			if err == nil || err.Error() != tt.want {
				t.Fatalf("err = %v\nwant %s", err, tt.want)
			}
		})
	}
	_, _, err := runLatch(t, "explain", "--config", exampleConfigPath, "--task", "nightly-report")
	if err == nil || !strings.Contains(err.Error(), `Required flag "agent" not set`) {
		t.Fatalf("err = %v", err)
	}
}
