package broker_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
)

const (
	tokenValue = "hvs.CAESIJsuper-secret-token-value"
	keyValue   = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIsecretkeymaterial\n-----END EC PRIVATE KEY-----"
)

func testSecret() broker.Secret {
	return broker.NewSecret(map[string]string{"token": tokenValue, "private_key": keyValue})
}

// TestSecret_Redacts formats a secret every way a log line, an error or a
// stored record might, and fails if any of them shows a value.
func TestSecret_Redacts(t *testing.T) {
	s := testSecret()
	m := broker.Minted{Secret: s, Refs: broker.Refs{TokenAccessor: "acc-1"}}
	type holder struct {
		name   string
		secret broker.Secret // unexported: fmt cannot call its methods
	}
	h := holder{name: "h", secret: s}
	p := &m

	var outputs []string
	add := func(how, out string) { outputs = append(outputs, how+": "+out) }

	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%10.3s", "%T"} {
		add("Sprintf "+verb+" secret", fmt.Sprintf(verb, s))
		add("Sprintf "+verb+" *secret", fmt.Sprintf(verb, &s))
		add("Sprintf "+verb+" minted", fmt.Sprintf(verb, m))
		add("Sprintf "+verb+" *minted", fmt.Sprintf(verb, p))
		add("Sprintf "+verb+" unexported field", fmt.Sprintf(verb, h))
		add("Sprintf "+verb+" slice", fmt.Sprintf(verb, []broker.Secret{s}))
		add("Sprintf "+verb+" map", fmt.Sprintf(verb, map[string]any{"s": s}))
	}
	add("Sprint", fmt.Sprint(s, m, h))
	add("Sprintln", fmt.Sprintln(s, m, h))
	add("String", s.String())
	add("GoString", s.GoString())

	for _, v := range []any{s, m, &m, map[string]any{"secret": s}} {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("json.Marshal(%T): %v", v, err)
		}
		add(fmt.Sprintf("json %T", v), string(b))
		b, err = json.MarshalIndent(v, "", " ")
		if err != nil {
			t.Fatal(err)
		}
		add(fmt.Sprintf("json indent %T", v), string(b))
	}
	txt, err := s.MarshalText()
	if err != nil {
		t.Fatal(err)
	}
	add("MarshalText", string(txt))

	for name, h := range map[string]func(*bytes.Buffer) slog.Handler{
		"slog json": func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) },
		"slog text": func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) },
	} {
		var buf bytes.Buffer
		l := slog.New(h(&buf))
		l.Info("minted", "secret", s, "minted", m, "ptr", &m, slog.Any("any", s), slog.Group("g", "s", s))
		l.Info("fields", "holder", h)
		add(name, buf.String())
	}
	var buf bytes.Buffer
	log.New(&buf, "", 0).Printf("minted %v %+v %s", s, m, s)
	add("log.Printf", buf.String())

	wrapped := fmt.Errorf("mint failed for %v: %w", s, errors.New("boom"))
	add("fmt.Errorf %w", wrapped.Error())
	add("fmt.Errorf %v", fmt.Errorf("mint: %v / %+v / %#v", s, m, m).Error())
	add("errors.Join", errors.Join(wrapped, fmt.Errorf("%s", s)).Error())

	prepared := broker.Prepared{Refs: broker.Refs{MintAccessor: "acc"}, Credential: s}
	add("prepared %+v", fmt.Sprintf("%+v", prepared))
	add("request %+v", fmt.Sprintf("%+v", broker.MintRequest{LeaseID: "x", Prepared: prepared}))

	for _, out := range outputs {
		for _, secret := range []string{tokenValue, "super-secret", "secretkeymaterial", "BEGIN EC PRIVATE KEY"} {
			if strings.Contains(out, secret) {
				t.Errorf("secret leaked via %s", out)
			}
		}
	}
	// Every direct rendering says what happened, not just nothing.
	for _, out := range []string{fmt.Sprint(s), fmt.Sprintf("%#v", s), s.String()} {
		if out != "[redacted]" {
			t.Errorf("secret prints as %q, want [redacted]", out)
		}
	}
	if b, _ := json.Marshal(s); string(b) != `"[redacted]"` {
		t.Errorf("json.Marshal(secret) = %s, want \"[redacted]\"", b)
	}
}

func TestSecret_Reveal(t *testing.T) {
	fields := map[string]string{"username": "u", "password": "p"}
	s := broker.NewSecret(fields)
	fields["password"] = "changed" // NewSecret copied
	got := s.Reveal()
	if got["username"] != "u" || got["password"] != "p" || len(got) != 2 {
		t.Fatalf("Reveal = %v", got)
	}
	got["username"] = "mutated" // Reveal copied
	if s.Reveal()["username"] != "u" {
		t.Fatal("Reveal returned the secret's own map")
	}
	if keys := s.Keys(); strings.Join(keys, ",") != "password,username" {
		t.Fatalf("Keys = %v", keys)
	}
	var zero broker.Secret
	if !zero.IsZero() || len(zero.Reveal()) != 0 || zero.String() != "[redacted]" {
		t.Fatal("zero Secret misbehaves")
	}
	if s.IsZero() {
		t.Fatal("IsZero on a secret with fields")
	}
}

func TestMintRequest_Validate(t *testing.T) {
	ok := broker.MintRequest{LeaseID: "01JABCDEFGHJKMNPQRSTVWXYZ0", Agent: "spiffe://example.org/agent/a", Task: "t", TTL: time.Minute}
	tests := []struct {
		name string
		edit func(*broker.MintRequest)
		want string // "" = valid
	}{
		{"Valid", func(*broker.MintRequest) {}, ""},
		{"ErrNoLeaseID", func(r *broker.MintRequest) { r.LeaseID = "" }, "missing [lease ID]"},
		{"ErrNoAgentNoTask", func(r *broker.MintRequest) { r.Agent, r.Task = "", "" }, "missing [agent task]"},
		{"ErrZeroTTL", func(r *broker.MintRequest) { r.TTL = 0 }, "TTL must be positive"},
		{"ErrMaxBelowTTL", func(r *broker.MintRequest) { r.MaxTTL = time.Second }, "max TTL 1s is below TTL 1m0s"},
		{"MaxTTLEqual", func(r *broker.MintRequest) { r.MaxTTL = time.Minute }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := ok
			tt.edit(&r)
			err := r.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, broker.ErrInvalidMintRequest) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v, want ErrInvalidMintRequest containing %q", err, tt.want)
			}
		})
	}
}

func TestMintRequest_EffectiveMaxTTL(t *testing.T) {
	r := broker.MintRequest{TTL: time.Minute, MaxTTL: time.Hour}
	if got := r.EffectiveMaxTTL(); got != time.Minute {
		t.Fatalf("not renewable: %s, want TTL", got)
	}
	r.Renewable = true
	if got := r.EffectiveMaxTTL(); got != time.Hour {
		t.Fatalf("renewable: %s, want MaxTTL", got)
	}
	r.MaxTTL = 0
	if got := r.EffectiveMaxTTL(); got != time.Minute {
		t.Fatalf("renewable without MaxTTL: %s, want TTL", got)
	}
}

func TestRefs(t *testing.T) {
	if !(broker.Refs{}).IsZero() {
		t.Fatal("zero Refs not IsZero")
	}
	prepared := broker.Refs{MintAccessor: "m", Policy: "latch-x"}
	minted := broker.Refs{VaultLeaseID: "database/creds/r/1", Policy: "kept"}
	got := minted.Merge(prepared)
	want := broker.Refs{VaultLeaseID: "database/creds/r/1", Policy: "kept", MintAccessor: "m"}
	if got != want {
		t.Fatalf("Merge = %+v, want %+v", got, want)
	}
	b, err := json.Marshal(broker.Refs{Serial: "aa:bb"})
	if err != nil || string(b) != `{"serial":"aa:bb"}` {
		t.Fatalf("json = %s, %v", b, err)
	}
}
