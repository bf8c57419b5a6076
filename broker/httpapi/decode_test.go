package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/latchbroker/latch/attest"
	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/api"
	"github.com/latchbroker/latch/templates"
)

func TestDecodeJSON(t *testing.T) {
	tests := []struct {
		name   string
		body   string
		reason string // "" when accepted
	}{
		{"Minimal", `{"task":"report"}`, ""},
		{"Full", `{"task":"report","params":{"region":"eu"},"reason":"r","ttl":"5m","request_id":"a-1","trace_id":"t:1","approval_id":"x"}`, ""},
		{"WhiteSpace", " \n\t{ \"task\" : \"report\" }\r\n ", ""},
		{"EmptyParams", `{"task":"report","params":{}}`, ""},
		{"MultiLineReason", `{"task":"report","reason":"an LLM's reason:\n- the ticket is open\n\t- and assigned to me\r\n"}`, ""},
		{"NullParams", `{"task":"report","params":null}`, ""},
		{"Empty", ``, reasonEmptyBody},
		{"Blank", `   `, reasonEmptyBody},
		{"String", `"task"`, reasonNotObject},
		{"Number", `1`, reasonNotObject},
		{"Unknown", `{"task":"report","x":1}`, reasonUnknownField},
		{"CaseFolded", `{"TASK":"report"}`, reasonUnknownField},
		{"Duplicate", `{"task":"a","task":"b"}`, reasonDuplicateKey},
		{"DuplicateEscaped", `{"task":"a","t\u0061sk":"b"}`, reasonDuplicateKey},
		{"DuplicateParam", `{"task":"a","params":{"k":"1","k":"2"}}`, reasonDuplicateKey},
		{"Trailing", `{"task":"a"}{}`, reasonTrailingData},
		{"TrailingComma", `{"task":"a"},`, reasonTrailingData},
		{"Unterminated", `{"task":"a"`, reasonMalformed},
		{"BadEscape", `{"task":"\x"}`, reasonMalformed},
		{"ControlInString", "{\"task\":\"a\x01\"}", reasonMalformed},
		{"BadUTF8", "{\"task\":\"\xc3\x28\"}", reasonInvalidUTF8},
		{"Deep", `{"params":` + strings.Repeat("[", 20) + strings.Repeat("]", 20) + `}`, reasonTooDeep},
		{"TaskNumber", `{"task":1}`, reasonWrongType},
		{"ParamsArray", `{"task":"a","params":["x"]}`, reasonWrongType},
		{"TTLNumber", `{"task":"a","ttl":5}`, reasonWrongType},
		{"TTLBad", `{"task":"a","ttl":"soon"}`, reasonWrongType},
		{"NoTask", `{}`, reasonInvalidField},
		{"TaskSpace", `{"task":"a b"}`, reasonInvalidField},
		{"LongReason", `{"task":"a","reason":"` + strings.Repeat("r", api.MaxReasonLen+1) + `"}`, reasonInvalidField},
		{"ControlInReason", `{"task":"a","reason":"line\u001b[2Jbreak"}`, reasonInvalidField},
		{"ControlInLineOfReason", `{"task":"a","reason":"one line\nand a bell\u0007"}`, reasonInvalidField},
		{"TooManyParams", `{"task":"a","params":{` + manyParams(api.MaxParams+1) + `}}`, reasonInvalidField},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var req api.CredentialsRequest
			bad := decodeJSON([]byte(tt.body), &req)
			switch {
			case tt.reason == "" && bad != nil:
				t.Fatalf("refused: %+v", bad)
			case tt.reason != "" && bad == nil:
				t.Fatalf("accepted %+v; want %s", req, tt.reason)
			case bad != nil && (bad.reason != tt.reason || bad.code != api.CodeInvalid || bad.message == ""):
				t.Fatalf("refusal = %+v; want reason %s", bad, tt.reason)
			}
		})
	}
}

func manyParams(n int) string {
	parts := make([]string, n)
	for i := range parts {
		parts[i] = fmt.Sprintf(`"p%d":"v"`, i)
	}
	return strings.Join(parts, ",")
}

func TestDecode_EmptyObjectEndpoints(t *testing.T) {
	var req api.RenewRequest
	if bad := decodeJSON([]byte(`{}`), &req); bad != nil {
		t.Fatal(bad)
	}
	bad := decodeJSON([]byte(`{"lease":"x"}`), &req)
	if bad == nil || !strings.Contains(bad.message, "known fields: ttl") {
		t.Fatalf("refusal = %+v; want the known fields listed", bad)
	}
}

// FuzzDecodeCredentials feeds arbitrary bodies to the strict decoder. It
// must never panic; what it accepts must be valid, must also pass
// encoding/json's own strict decoding, and must survive a round trip.
func FuzzDecodeCredentials(f *testing.F) {
	for _, s := range []string{
		`{"task":"report","params":{"region":"eu"},"reason":"nightly","ttl":"10m","request_id":"r-1","trace_id":"t-1"}`,
		`{"task":"report","task":"x"}`,
		`{"task":"report"} trailing`,
		`{"TASK":"report"}`,
		`{"params":{"a":{"b":[1,2,{"c":null}]}}}`,
		"{\"task\":\"\xff\"}",
		`[]`, `null`, ``, `{`, `{"ttl":600}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		// The decoder must finish, whatever the input: a hang is a crash.
		watchdog := time.AfterFunc(3*time.Second, func() { panic(fmt.Sprintf("WATCHDOG hang on %q", body)) })
		defer watchdog.Stop()
		var req api.CredentialsRequest
		bad := decodeJSON(body, &req)
		if bad != nil {
			if bad.message == "" || bad.reason == "" || api.Status(bad.code) != http.StatusBadRequest {
				t.Fatalf("refusal without a message, reason or 400: %+v", bad)
			}
			if !utf8.ValidString(bad.message) {
				t.Fatalf("refusal message is not UTF-8: %q", bad.message)
			}
			return
		}
		if !utf8.Valid(body) {
			t.Fatal("accepted invalid UTF-8")
		}
		if err := req.Validate(); err != nil {
			t.Fatalf("accepted an invalid request: %v", err)
		}
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		var std api.CredentialsRequest
		if err := dec.Decode(&std); err != nil {
			t.Fatalf("accepted what encoding/json refuses: %v", err)
		}
		if !reflect.DeepEqual(normalize(std), normalize(req)) {
			t.Fatalf("decoded differently: %+v vs %+v", req, std)
		}
		again, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		var back api.CredentialsRequest
		if bad := decodeJSON(again, &back); bad != nil {
			t.Fatalf("re-encoded request %s refused: %+v", again, bad)
		}
		if !reflect.DeepEqual(normalize(back), normalize(req)) {
			t.Fatalf("round trip changed the request: %+v vs %+v", req, back)
		}
	})
}

func normalize(r api.CredentialsRequest) api.CredentialsRequest {
	if len(r.Params) == 0 {
		r.Params = nil
	}
	return r
}

func TestCheckContentType(t *testing.T) {
	for ct, ok := range map[string]bool{
		"application/json":                  true,
		"application/json; charset=utf-8":   true,
		"Application/JSON; Charset=UTF-8":   true,
		"":                                  false,
		"text/json":                         false,
		"application/json; charset=utf-16":  false,
		"application/json; boundary=x":      false,
		"application/x-www-form-urlencoded": false,
		"application/json;;":                false,
	} {
		r := httptest.NewRequest("POST", "/", nil)
		if ct != "" {
			r.Header.Set("Content-Type", ct)
		}
		if got := checkContentType(r) == nil; got != ok {
			t.Errorf("Content-Type %q accepted = %v, want %v", ct, got, ok)
		}
	}
}

// TestErrorBody walks the one table: every code gets its status, and only
// safe text reaches the body.
func TestErrorBody(t *testing.T) {
	next := time.Date(2026, 3, 3, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		err    error
		status int
		code   string
	}{
		{&broker.Error{Code: broker.EINVALID, Message: "bad"}, 400, api.CodeInvalid},
		{&broker.Error{Code: broker.EFORBIDDEN, Message: "denied", Reasons: []string{"frozen:w"}, NextAllowedAt: next}, 403, api.CodeForbidden},
		{&broker.Error{Code: broker.ENOTFOUND, Message: "none"}, 404, api.CodeNotFound},
		{&broker.Error{Code: api.CodeMethodNotAllowed, Message: "no"}, 405, api.CodeMethodNotAllowed},
		{&broker.Error{Code: broker.ECONFLICT, Message: "state"}, 409, api.CodeConflict},
		{&badRequest{code: api.CodeTooLarge, reason: reasonTooLarge, message: "big"}, 413, api.CodeTooLarge},
		{&broker.Error{Code: broker.ELIMIT, Message: "slow down", RetryAfter: 1500 * time.Millisecond}, 429, api.CodeLimit},
		{&broker.Error{Code: broker.EINTERNAL, Message: "db exploded", Err: errors.New("SECRET-CAUSE")}, 500, api.CodeInternal},
		{errors.New("SECRET-CAUSE"), 500, api.CodeInternal},
		{&broker.Error{Code: "made-up", Message: "SECRET-CAUSE"}, 500, api.CodeInternal},
		{&broker.Error{Code: broker.EUNAVAILABLE, Message: "vault down", Err: errors.New("SECRET-CAUSE")}, 503, api.CodeUnavailable},
		{&attest.Error{Kind: attest.KindExpired, Message: "SVID expired"}, 401, api.CodeUnauthorized},
		{&attest.Error{Kind: attest.KindUnavailable, Message: "no bundle"}, 503, api.CodeUnavailable},
		{fmt.Errorf("wrapped: %w", &broker.Error{Code: broker.ECONFLICT, Message: "state"}), 409, api.CodeConflict},
	}
	covered := map[string]bool{}
	for _, tt := range tests {
		body, status := errorBody(tt.err, "req-1")
		if status != tt.status || body.Code != tt.code || api.Status(body.Code) != status {
			t.Errorf("%v → %d %s, want %d %s", tt.err, status, body.Code, tt.status, tt.code)
		}
		if body.Reasons == nil {
			t.Errorf("%v: reasons is null, want an array", tt.err)
		}
		b, _ := json.Marshal(body)
		if strings.Contains(string(b), "SECRET-CAUSE") || strings.Contains(string(b), "db exploded") {
			t.Errorf("internal detail in the body: %s", b)
		}
		covered[body.Code] = true
	}
	for _, c := range api.Codes() {
		if !covered[c] {
			t.Errorf("code %s not covered", c)
		}
	}
	body, _ := errorBody(&broker.Error{Code: broker.ELIMIT, RetryAfter: 1500 * time.Millisecond}, "r")
	if body.RetryAfter != 2 {
		t.Errorf("retry_after = %d, want 1.5 s rounded up to 2", body.RetryAfter)
	}
	body, _ = errorBody(&broker.Error{Code: broker.ELIMIT}, "r")
	if body.RetryAfter != 1 {
		t.Errorf("retry_after = %d, want at least 1", body.RetryAfter)
	}
	body, _ = errorBody(&broker.Error{Code: broker.EFORBIDDEN, Reasons: []string{"frozen:w"}, NextAllowedAt: next}, "r")
	if !body.NextAllowedAt.Equal(next) || body.Reasons[0] != "frozen:w" {
		t.Errorf("denial body = %+v", body)
	}
}

// TestWireTypesMirrorTheDomain fails when a domain type gains a field its
// wire type lacks (or the JSON names drift apart).
func TestWireTypesMirrorTheDomain(t *testing.T) {
	pairs := []struct{ domain, wire any }{
		{broker.Lease{}, api.Lease{}},
		{broker.Refs{}, api.Refs{}},
		{broker.Event{}, api.Event{}},
		{templates.Decision{}, api.Decision{}},
		{templates.Reason{}, api.Reason{}},
		{templates.Step{}, api.Step{}},
		{templates.Rendered{}, api.Rendered{}},
		{templates.Names{}, api.Names{}},
		{broker.FreezeState{}, api.Freeze{}},
		{api.CredentialsResponse{}, credentialsWire{}},
		{broker.Approval{}, api.Approval{}},
		{broker.Rendered{}, api.ApprovalRendered{}},
		{broker.ApprovalReason{}, api.ApprovalReason{}},
		{broker.Review{}, api.Review{}},
	}
	for _, p := range pairs {
		d, w := jsonNames(reflect.TypeOf(p.domain)), jsonNames(reflect.TypeOf(p.wire))
		if !reflect.DeepEqual(d, w) {
			t.Errorf("%T has JSON fields %v, %T has %v", p.domain, d, p.wire, w)
		}
	}
	// Agent records: every field of the record is in api.Agent.
	rec, agent := jsonNames(reflect.TypeOf(broker.AgentRecord{})), jsonNames(reflect.TypeOf(api.Agent{}))
	for n := range rec {
		if !agent[n] {
			t.Errorf("api.Agent lacks %s of broker.AgentRecord", n)
		}
	}
}

func jsonNames(t reflect.Type) map[string]bool {
	out := map[string]bool{}
	for i := range t.NumField() {
		if f := t.Field(i); f.Anonymous && f.Tag.Get("json") == "" {
			maps.Copy(out, jsonNames(f.Type)) // encoding/json flattens it
			continue
		}
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name == "" {
			name = t.Field(i).Name
		}
		out[name] = true
	}
	return out
}

func TestConvert_Decision(t *testing.T) {
	at := time.Date(2026, 3, 10, 12, 0, 0, 0, time.FixedZone("CET", 3600))
	d := templates.Decision{
		Outcome: templates.Deny, Agent: "a", AgentPattern: "p", Owner: "o", Task: "t", TemplateVersion: "sha256:x",
		Backend: "b", BackendType: "vault-pki", Params: map[string]string{"k": "v"}, Tier: "high", TierWhy: []string{"why"},
		Approvals: 1, Alert: true, TTL: 5 * time.Minute, MaxTTL: time.Hour,
		Rendered: templates.Rendered{Policy: "pol", Path: "p/x", Vars: map[string]string{"v": "1"},
			Names: &templates.Names{CommonName: "cn", AltNames: []string{"a"}, URISANs: []string{"u"}, IPSANs: []string{"1.2.3.4"}}},
		Reasons:       []templates.Reason{{Code: templates.ReasonFrozen, Message: "m", Window: "w", NextAllowedAt: at}},
		Trace:         []templates.Step{{Rule: "r", Result: templates.ResultDeny, Detail: "d"}},
		NextAllowedAt: at, EvaluatedAt: at,
	}
	got := decisionOut(d)
	// Same JSON, but for durations, which travel as strings.
	want, _ := json.Marshal(d)
	var wm map[string]any
	_ = json.Unmarshal(want, &wm)
	wm["ttl"], wm["max_ttl"] = "5m0s", "1h0m0s"
	wm["next_allowed_at"], wm["evaluated_at"] = at.UTC().Format(time.RFC3339Nano), at.UTC().Format(time.RFC3339Nano)
	wm["reasons"].([]any)[0].(map[string]any)["next_allowed_at"] = at.UTC().Format(time.RFC3339Nano)
	gb, _ := json.Marshal(got)
	var gm map[string]any
	_ = json.Unmarshal(gb, &gm)
	if !reflect.DeepEqual(gm, wm) {
		t.Fatalf("decision on the wire:\n%s\nwant:\n%v", gb, wm)
	}
}
