package api_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker/api"
)

func TestStatus(t *testing.T) {
	want := map[string]int{
		api.CodeInvalid: 400, api.CodeUnauthorized: 401, api.CodeForbidden: 403, api.CodeNotFound: 404,
		api.CodeMethodNotAllowed: 405, api.CodeConflict: 409, api.CodeTooLarge: 413, api.CodeLimit: 429,
		api.CodeInternal: 500, api.CodeUnavailable: 503,
	}
	if len(api.Codes()) != len(want) {
		t.Fatalf("Codes() = %v", api.Codes())
	}
	for code, status := range want {
		if got := api.Status(code); got != status {
			t.Errorf("Status(%s) = %d, want %d", code, got, status)
		}
	}
	if api.Status("nonsense") != 500 {
		t.Error("an unknown code must be a 500")
	}
}

func TestDuration(t *testing.T) {
	b, err := json.Marshal(struct {
		TTL api.Duration `json:"ttl"`
	}{api.Duration(90 * time.Second)})
	if err != nil || string(b) != `{"ttl":"1m30s"}` {
		t.Fatalf("marshal = %s, %v", b, err)
	}
	var d api.Duration
	if err := json.Unmarshal([]byte(`"10m"`), &d); err != nil || d.D() != 10*time.Minute {
		t.Fatalf("unmarshal = %s, %v", d, err)
	}
	for _, bad := range []string{`600`, `"10 minutes"`, `null`, `true`, `""`} {
		if err := json.Unmarshal([]byte(bad), &d); !errors.Is(err, api.ErrDurationFormat) && bad != `null` {
			t.Errorf("%s: err = %v, want ErrDurationFormat", bad, err)
		}
	}
}

// TestSecret_Redacted: a response printed or logged by accident does not
// show its secret; its JSON does, since that is how it travels.
func TestSecret_Redacted(t *testing.T) {
	const pw = "hunter2-CANARY"
	res := &api.CredentialsResponse{Lease: api.Lease{ID: "L"}, Secret: api.Secret{"password": pw}}
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("got", "secret", res.Secret, "res", res)
	slog.New(slog.NewTextHandler(&logged, nil)).Info("got", "secret", res.Secret)
	for _, s := range []string{
		fmt.Sprint(res), fmt.Sprintf("%v %+v %#v %s %q %x", res, res, res, res.Secret, res.Secret, res.Secret),
		fmt.Sprintf("%+v", *res), res.Secret.String(), logged.String(),
	} {
		if strings.Contains(s, pw) {
			t.Fatalf("secret printed: %s", s)
		}
	}
	b, _ := json.Marshal(res)
	if strings.Contains(string(b), pw) || !strings.Contains(string(b), `"secret":"[redacted]"`) {
		t.Fatalf("JSON = %s, want the secret redacted", b)
	}
	// What the server sends decodes into it.
	var back api.CredentialsResponse
	if err := json.Unmarshal([]byte(`{"lease":{"id":"L"},"secret":{"password":"`+pw+`"}}`), &back); err != nil || back.Secret["password"] != pw {
		t.Fatalf("decode = %+v, %v", back, err)
	}
	if m := map[string]string(back.Secret); m["password"] != pw {
		t.Fatal("conversion lost the fields")
	}
}

func TestValidate(t *testing.T) {
	on := true
	tests := []struct {
		name  string
		v     interface{ Validate() error }
		field string // "" when valid
	}{
		{"Credentials", &api.CredentialsRequest{Task: "report", Params: map[string]string{"region": "eu"}, RequestID: "run-1.2:3_4"}, ""},
		{"NoTask", &api.CredentialsRequest{}, "task"},
		{"Pickup", &api.CredentialsRequest{ApprovalID: "01JABCDEFGHJKMNPQRSTVWXYZ0"}, ""},
		{"TaskControl", &api.CredentialsRequest{Task: "a\x00"}, "task"},
		{"ParamName", &api.CredentialsRequest{Task: "a", Params: map[string]string{"": "x"}}, "params"},
		{"ParamValueLong", &api.CredentialsRequest{Task: "a", Params: map[string]string{"k": strings.Repeat("v", api.MaxParamValueLen+1)}}, "params.k"},
		{"RequestIDSlash", &api.CredentialsRequest{Task: "a", RequestID: "a/b"}, "request_id"},
		{"TraceIDLong", &api.CredentialsRequest{Task: "a", TraceID: strings.Repeat("t", api.MaxIDLen+1)}, "trace_id"},
		{"NegativeTTL", &api.CredentialsRequest{Task: "a", TTL: -1}, "ttl"},
		{"ReasonLines", &api.CredentialsRequest{Task: "a", Reason: "a\nb\r\n\tc"}, ""},
		{"ReasonEscape", &api.CredentialsRequest{Task: "a", Reason: "a\nb\x1b[2J"}, "reason"},
		{"ParamControlIsThePolicys", &api.CredentialsRequest{Task: "a", Params: map[string]string{"k": "12\n"}}, ""},
		{"ParamInvalidUTF8", &api.CredentialsRequest{Task: "a", Params: map[string]string{"k": "\xff"}}, "params.k"},
		{"Renew", &api.RenewRequest{TTL: api.Duration(time.Minute)}, ""},
		{"RenewNegative", &api.RenewRequest{TTL: -1}, "ttl"},
		{"RevokeLease", &api.RevokeRequest{Lease: "01JABCDEFGHJKMNPQRSTVWXYZ0", Reason: "r"}, ""},
		{"RevokeBadLease", &api.RevokeRequest{Lease: "01JABCDEFGHJKMNPQRSTVWXYZI", Reason: "r"}, "lease"},
		{"RevokeNone", &api.RevokeRequest{Reason: "r"}, "lease"},
		{"RevokeTwo", &api.RevokeRequest{All: true, Agent: "spiffe://e/a", Reason: "r"}, "lease"},
		{"RevokeAgent", &api.RevokeRequest{Agent: "spiffe://example.org/agent/a", Reason: "r"}, ""},
		{"RevokeBadAgent", &api.RevokeRequest{Agent: "report-bot", Reason: "r"}, "agent"},
		{"RevokeTemplate", &api.RevokeRequest{Template: "close-ticket", Reason: "r"}, ""},
		{"RevokeTemplateVersion", &api.RevokeRequest{Template: "close-ticket", Version: "sha256:3f2a9c1b", Reason: "r"}, ""},
		{"RevokeTemplateByHash", &api.RevokeRequest{Template: "sha256:3f2a9c1b", Reason: "r"}, "template"},
		{"RevokeVersionAlone", &api.RevokeRequest{All: true, Version: "sha256:3f2a9c1b", Reason: "r"}, "version"},
		{"RevokeVersionShort", &api.RevokeRequest{Template: "t", Version: "sha256:3f2a", Reason: "r"}, "version"},
		{"RevokeVersionNotHex", &api.RevokeRequest{Template: "t", Version: "sha256:3F2A9C1BXX", Reason: "r"}, "version"},
		{"RevokeNoReason", &api.RevokeRequest{All: true, Reason: "  "}, "reason"},
		{"Agent", &api.AgentActionRequest{Reason: "r"}, ""},
		{"AgentNoReason", &api.AgentActionRequest{}, "reason"},
		{"Freeze", &api.FreezeRequest{On: &on, Reason: "r"}, ""},
		{"FreezeNoOn", &api.FreezeRequest{Reason: "r"}, "on"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.v.Validate()
			if tt.field == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var fe *api.FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field || fe.Problem == "" {
				t.Fatalf("err = %v, want a FieldError for %s", err, tt.field)
			}
		})
	}
}

func TestValidLeaseID(t *testing.T) {
	for id, ok := range map[string]bool{
		"01JABCDEFGHJKMNPQRSTVWXYZ0": true,
		"7ZZZZZZZZZZZZZZZZZZZZZZZZZ": true,
		"8ZZZZZZZZZZZZZZZZZZZZZZZZZ": false, // beyond 48 bits of time
		"01jabcdefghjkmnpqrstvwxyz0": false,
		"01JABCDEFGHJKMNPQRSTVWXYZ":  false,
		"01JABCDEFGHJKMNPQRSTVWXYZL": false,
		"../../../etc/passwd-000000": false,
		"":                           false,
	} {
		if api.ValidLeaseID(id) != ok {
			t.Errorf("ValidLeaseID(%q) = %v", id, !ok)
		}
	}
}

func TestAgentPath(t *testing.T) {
	if p := api.AgentPath("spiffe://example.org/agent/a b", api.ActionQuarantine); p != "/v1/agents/spiffe:%2F%2Fexample.org%2Fagent%2Fa%20b/quarantine" {
		t.Fatalf("AgentPath = %s", p)
	}
}

func TestParseAge(t *testing.T) {
	for in, want := range map[string]time.Duration{"30d": 30 * 24 * time.Hour, "1d": 24 * time.Hour, "12h": 12 * time.Hour, "90m": 90 * time.Minute} {
		if got, err := api.ParseAge(in); err != nil || got != want {
			t.Errorf("ParseAge(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0d", "-1d", "d", "30days", "1.5d", "0s", "-5m", "99999999d", "30D"} {
		if got, err := api.ParseAge(in); err == nil {
			t.Errorf("ParseAge(%q) = %v; want an error", in, got)
		}
	}
}
