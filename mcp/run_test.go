package mcp

import (
	"strings"
	"testing"

	"github.com/latchbroker/latch/broker/api"
)

func TestRedact(t *testing.T) {
	secret := api.Secret{"username": "v-token-report-eu-abc", "password": "A1a-9xYzQ7pLm3Nc", "private_key": "-----BEGIN KEY-----\nMIIEvQIBADANBgkq\n-----END KEY-----"}
	out := redact("user=v-token-report-eu-abc pw=A1a-9xYzQ7pLm3Nc again A1a-9xYzQ7pLm3Nc\nMIIEvQIBADANBgkq", secret)
	for _, v := range []string{"v-token-report-eu-abc", "A1a-9xYzQ7pLm3Nc", "MIIEvQIBADANBgkq"} {
		if strings.Contains(out, v) {
			t.Fatalf("redacted output %q still holds %q", out, v)
		}
	}
	if !strings.HasPrefix(out, "user=[redacted] pw=[redacted]") {
		t.Fatalf("redacted output = %q", out)
	}
}

// A secret cut by the output's cap is not shown in part.
func TestRun_CapHidesPartialSecret(t *testing.T) {
	secret := api.Secret{"password": "S3cretPassw0rd-0123456789"}
	s := &Server{}
	cmd := CommandConfig{Timeout: DefaultTimeout, MaxOutput: 16, Env: map[string]string{"PW": "password"}}
	// 10 bytes, then the password: the cap falls inside it.
	code, out, cut := s.run(t.Context(), cmd, []string{"/bin/sh", "-c", `printf '0123456789%s%s' "$PW" "$PW"`}, secret)
	if code != 0 || !cut || strings.Contains(out, "S3cret") || len(out) > 16 {
		t.Fatalf("run = %d %q cut=%v; want at most 16 bytes, cut, no part of the password", code, out, cut)
	}
}

func TestArgv(t *testing.T) {
	cfg := &Config{Tasks: map[string]TaskConfig{"db": {Commands: map[string]CommandConfig{"q": {
		Run: []string{"/usr/bin/psql", "-c"}, Args: []ArgConfig{{Name: "query", Pattern: "^SELECT [0-9+ ]+$"}}}}}}}
	if err := cfg.check(); err != nil {
		t.Fatal(err)
	}
	cmd := cfg.Tasks["db"].Commands["q"]
	if argv, err := cmd.argv([]string{"SELECT 40 + 2"}); err != nil || strings.Join(argv, "|") != "/usr/bin/psql|-c|SELECT 40 + 2" {
		t.Fatalf("argv = %v, %v", argv, err)
	}
	for _, bad := range [][]string{{"SELECT 1; DROP TABLE x"}, {}, {"SELECT 1", "SELECT 2"}} {
		if _, err := cmd.argv(bad); err == nil {
			t.Errorf("argv(%q) accepted", bad)
		}
	}
}
