package server

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/latchbroker/latch/integration/vaultenv"
)

// TestServer_VaultSetupChecked: with a Vault lacking, in turn, a line of
// latch's policy, a token role, a role's setting, a line of the mint
// tokens' policy or a PKI mount, latch server starts but is not ready
// (/readyz says what is missing), logs the missing piece with the README
// section that fixes it, and latch doctor prints it and exits 1; with
// everything in place latch doctor exits 0. The pieces are copies under
// doctor- names, so the README's own setup, which other tests use, stays.
func TestServer_VaultSetupChecked(t *testing.T) {
	e := doctorEnv{setup(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	readme, err := e.Root.Sys().GetPolicyWithContext(ctx, "latch")
	if err != nil {
		t.Fatal(err)
	}
	// latch's policy, also allowing the doctor- token roles.
	withDoctorRoles := readme + "path \"auth/token/create/doctor-*\" { capabilities = [\"update\"] }\n"
	e.doctorPolicy(t, ctx, "doctor_empty", `path "secret/data/nothing" { capabilities = ["read"] }`)
	e.doctorRole(t, ctx, "latch-mint", "doctor-mint-short", map[string]any{"token_explicit_max_ttl": "1m"})
	e.doctorRole(t, ctx, "latch-mint", "doctor-mint-child", map[string]any{"orphan": false})
	e.doctorRole(t, ctx, "latch-mint", "doctor-mint-nothing", map[string]any{"allowed_policies": "doctor_empty"})

	tests := []struct {
		name    string
		policy  string // latch's policy
		o       latchOptions
		missing string // what the log, /readyz and doctor name
	}{
		{"CapabilitiesAccessor", without(t, readme, `path "sys/capabilities-accessor"`), latchOptions{}, "sys/capabilities-accessor"},
		{"OwnLookupAccessor", without(t, readme, `path "auth/token/lookup-accessor"`), latchOptions{}, "lacks update on auth/token/lookup-accessor"},
		{"GroupRoleCreate", without(t, readme, `path "auth/token/create/latch-group"`), latchOptions{}, "lacks update on auth/token/create/latch-group"},
		{"LeaseRevoke", without(t, readme, `path "sys/leases/revoke/database/creds/*"`), latchOptions{},
			"lacks update on sys/leases/revoke/database/creds/report-eu/doctor"},
		{"GroupRoleMissing", withDoctorRoles, latchOptions{Tokens: ", group_role: doctor-missing"}, "token role doctor-missing does not create"},
		{"MintRoleTTL", withDoctorRoles, latchOptions{AppDB: ", token_role: doctor-mint-short"}, "token role doctor-mint-short gives tokens"},
		{"MintRoleOrphan", withDoctorRoles, latchOptions{AppDB: ", token_role: doctor-mint-child"}, "doctor-mint-child makes tokens with orphan=false"},
		{"MintPolicy", withDoctorRoles, latchOptions{AppDB: ", token_role: doctor-mint-nothing"}, "lacks read on database/creds/report-eu"},
		{"PKIMount", readme, latchOptions{Backends: "  certs: { type: vault-pki, mount: nopki, role: agents }\n",
			Templates: map[string]string{"cert.yaml": certTemplate}}, "no CA at nopki/cert/ca"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.o.AppRole = e.doctorAppRole(t, ctx, fmt.Sprintf("doctor_latch_%d", i), tt.policy)
			tt.o.NoWait = true
			l := startLatchWith(t, tt.o)
			line := l.waitLog(t, tt.missing)
			if !strings.Contains(line, "The Vault policy latch needs") && !strings.Contains(line, "mount the pki engine") {
				t.Errorf("the log line names no fix: %s", line)
			}
			status, body := l.readyz(t)
			if status != http.StatusServiceUnavailable || !strings.Contains(body, tt.missing) {
				t.Fatalf("/readyz = %d %q; want 503 naming %q", status, body, tt.missing)
			}
			r := l.cli(ctx, nil, "doctor", "--config", l.config)
			t.Logf("latch doctor:\n%s%s", r.stdout, r.stderr)
			if r.code != 1 || !strings.Contains(r.stdout, "MISSING") || !strings.Contains(r.stdout, tt.missing) {
				t.Fatalf("latch doctor: exit %d, want 1 naming %q\n%s%s", r.code, tt.missing, r.stdout, r.stderr)
			}
		})
	}

	t.Run("AllPresent", func(t *testing.T) {
		l := startLatch(t)
		r := l.cli(ctx, nil, "doctor", "--config", l.config)
		if r.code != 0 || !strings.Contains(r.stdout, "everything latch needs is in Vault") {
			t.Fatalf("latch doctor on the README's setup: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		for _, part := range []string{"latch's Vault token", `backend "tokens"`, `backend "app-db"`} {
			if !strings.Contains(r.stdout, part) {
				t.Errorf("latch doctor does not report %s:\n%s", part, r.stdout)
			}
		}
		if !strings.Contains(l.log(), "everything latch needs is in place") {
			t.Errorf("the ready server did not log its complete setup:\n%s", l.log())
		}
	})
}

// certTemplate is a vault-pki template for the PKIMount case.
const certTemplate = `name: service-cert
description: A certificate.
backend: certs
params:
  service: { enum: [checkout] }
names:
  common_name: "{{ .params.service }}.svc.example.org"
ttl: 1h
risk: low
`

// without is policy less the block that starts with prefix (one line).
func without(t *testing.T, policy, prefix string) string {
	t.Helper()
	var out []string
	found := false
	for line := range strings.SplitSeq(policy, "\n") {
		if strings.HasPrefix(line, prefix) {
			found = true
			continue
		}
		out = append(out, line)
	}
	if !found {
		t.Fatalf("latch's policy has no line %q", prefix)
	}
	return strings.Join(out, "\n")
}

// doctorEnv adds to vaultenv.Env what this test writes into Vault.
type doctorEnv struct{ *vaultenv.Env }

func (e doctorEnv) doctorPolicy(t *testing.T, ctx context.Context, name, hcl string) {
	t.Helper()
	if err := e.Root.Sys().PutPolicyWithContext(ctx, name, hcl); err != nil {
		t.Fatal(err)
	}
}

// doctorRole copies token role from to name, with changes.
func (e doctorEnv) doctorRole(t *testing.T, ctx context.Context, from, name string, changes map[string]any) {
	t.Helper()
	s, err := e.Root.Logical().ReadWithContext(ctx, "auth/token/roles/"+from)
	if err != nil || s == nil {
		t.Fatalf("read token role %s: %v", from, err)
	}
	data := map[string]any{}
	for _, k := range []string{"allowed_policies", "allowed_policies_glob", "orphan", "renewable", "token_type", "token_no_default_policy", "token_explicit_max_ttl"} {
		if v, ok := s.Data[k]; ok {
			data[k] = v
		}
	}
	for k, v := range changes {
		data[k] = v
	}
	if _, err := e.Root.Logical().WriteWithContext(ctx, "auth/token/roles/"+name, data); err != nil {
		t.Fatal(err)
	}
}

// doctorAppRole writes policy as name and an AppRole of the same name
// that logs in with it alone.
func (e doctorEnv) doctorAppRole(t *testing.T, ctx context.Context, name, policy string) string {
	t.Helper()
	e.doctorPolicy(t, ctx, name, policy)
	if _, err := e.Root.Logical().WriteWithContext(ctx, "auth/approle/role/"+name, map[string]any{
		"token_policies": name, "token_no_default_policy": true, "token_ttl": "1h",
	}); err != nil {
		t.Fatal(err)
	}
	return name
}

// waitLog waits until the server's log has a line holding s and returns
// it; the server exiting or 30 s passing fails the test.
func (l *latch) waitLog(t *testing.T, s string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for line := range strings.SplitSeq(l.log(), "\n") {
			if strings.Contains(line, s) {
				return line
			}
		}
		select {
		case <-l.done:
			t.Fatalf("latch server exited before logging %q:\n%s", s, l.logs())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("latch server did not log %q in 30s:\n%s", s, l.logs())
		}
		time.Sleep(50 * time.Millisecond) // polling the log file: it has no other signal
	}
}

// readyz is GET /readyz's status and body.
func (l *latch) readyz(t *testing.T) (int, string) {
	t.Helper()
	resp, err := http.Get(l.metrics + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
