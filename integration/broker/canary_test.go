package broker

import (
	"bytes"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/boltstore"
	"github.com/latchbroker/latch/broker/brokertest"
)

// publicFields are secret fields that are not secret: the certificate and
// its CA chain are handed to anyone the agent talks to.
var publicFields = map[string]bool{"certificate": true, "issuing_ca": true, "ca_chain": true, "private_key_type": true}

// canaries returns the strings whose appearance anywhere would be a leak:
// every secret field value, and each line of a PEM private key (a log that
// escapes newlines would not hold the key whole).
func canaries(s broker.Secret) map[string]string {
	out := map[string]string{}
	for k, v := range s.Reveal() {
		if publicFields[k] || v == "" {
			continue
		}
		out[k] = v
		if strings.Contains(v, "-----BEGIN") {
			for i, line := range strings.Split(v, "\n") {
				if len(line) >= 16 && !strings.HasPrefix(line, "-----") {
					out[k+" line "+string(rune('0'+i))] = line
				}
			}
		}
	}
	return out
}

// TestSecretCanary mints secrets of every backend type through the
// Service, runs them through their life (renew, release, revoke, expiry,
// a failed commit), and then looks for every secret value in the bbolt
// file, the logs (latch's and its Vault client's), the audit export and
// every error returned on the way (invariant 1).
func TestSecretCanary(t *testing.T) {
	e := setup(t)
	ctx := t.Context()
	start := time.Now()
	agent := agentPrefix + "canary-bot"
	const region, service = "j", "canary"

	logs := &brokertest.SyncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	vc, err := e.newClient(log)
	if err != nil {
		t.Fatal(err)
	}
	defer vc.Close()
	if err := vc.Login(ctx); err != nil {
		t.Fatal(err)
	}
	go func() { _ = vc.Run(ctx) }()
	backends, err := newBackends(vc)
	if err != nil {
		t.Fatal(err)
	}
	failing := &failCommit{}
	clk := &clock{}
	l := newLatch(t, e, latchOptions{
		now: clk.Now, backends: backends, logger: log,
		wrap: func(s broker.Store) broker.Store { failing.Store = s; return failing },
	})

	secrets := map[string]string{} // what → value
	var errs []error
	note := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	issue := func(task string, params map[string]string) *broker.Issued {
		res := l.issue(t, agent, task, params)
		for k, v := range canaries(res.Secret) {
			secrets[task+" "+res.Lease.ID+" "+k] = v
		}
		return res
	}
	// latch's own AppRole secret ID is a secret too.
	sid, err := os.ReadFile(e.SecretIDFile)
	if err != nil {
		t.Fatal(err)
	}
	secrets["approle secret_id"] = strings.TrimSpace(string(sid))

	tok := issue(taskToken, map[string]string{"ticket": "42"})
	db := issue(taskDB, map[string]string{"region": region})
	cert := issue(taskCert, map[string]string{"service": service})
	expiring := issue(taskToken, map[string]string{"ticket": "43"})
	revoked := issue(taskDB, map[string]string{"region": region})
	if len(secrets) < 8 {
		t.Fatalf("only %d canaries: %v", len(secrets), keys(secrets))
	}

	_, err = l.svc.Leases().Renew(ctx, agent, tok.Lease.ID, time.Hour)
	note(err)
	_, err = l.svc.Leases().Renew(ctx, agent, db.Lease.ID, time.Hour)
	note(err)
	_, err = l.svc.Leases().Renew(ctx, agent, cert.Lease.ID, time.Hour) // certificates do not renew
	if err == nil {
		t.Fatal("renewed a certificate")
	}
	note(err)
	note(l.svc.Leases().Release(ctx, agent+"-other", tok.Lease.ID))
	note(l.svc.Leases().Release(ctx, agent, tok.Lease.ID))
	_, err = l.svc.Issue(ctx, broker.IssueRequest{Agent: agent, Task: taskDB, Params: map[string]string{"region": "z"}})
	note(err)
	_, err = l.svc.Leases().Revoke(ctx, "spiffe://example.org/ops/alice", "canary", broker.RevokeSelector{Lease: revoked.Lease.ID})
	note(err)
	// A mint Vault refuses (no such database role), after Prepare made
	// the mint token.
	_, err = l.svc.Issue(ctx, broker.IssueRequest{Agent: agent, Task: taskDB, Params: map[string]string{"region": noSuchRegion}})
	if broker.ErrorCode(err) != broker.EINTERNAL {
		t.Fatalf("Issue for a missing database role = %v, want %s", err, broker.EINTERNAL)
	}
	note(err)
	// A commit that fails after the backend minted: latch revokes the
	// secret it will never hand out.
	failing.arm("error")
	_, err = l.svc.Issue(ctx, broker.IssueRequest{Agent: agent, Task: taskDB, Params: map[string]string{"region": region}})
	if err == nil {
		t.Fatal("issued with a failing commit")
	}
	note(err)
	failing.arm("")
	// The expiring lease's TTL passes on latch's clock.
	clk.Add(2*time.Minute + time.Second)
	l.drain(t)
	note(l.svc.Leases().Reconcile(ctx))
	l.drain(t)
	_, err = l.svc.Leases().Renew(ctx, agent, expiring.Lease.ID, time.Minute)
	note(err)
	if got := l.lease(t, expiring.Lease.ID); got.State != broker.StateExpired {
		t.Fatalf("lease %s is %s, want expired", expiring.Lease.ID, got.State)
	}
	// Everything else goes too, so the check below sees every kind of
	// record.
	_, err = l.svc.Leases().Revoke(ctx, "spiffe://example.org/ops/alice", "canary: end", broker.RevokeSelector{Agent: agent})
	note(err)
	l.drain(t)
	e.assertConsistent(t, l.store, scope{agent: agent, region: region, cn: service + ".svc.example.org", since: start})

	if err := l.store.Close(); err != nil {
		t.Fatal(err)
	}
	file, err := os.ReadFile(l.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	var export bytes.Buffer
	if err := boltstore.ExportAudit(l.dbPath, time.Time{}, &export); err != nil {
		t.Fatal(err)
	}
	var errText strings.Builder
	for _, err := range errs {
		errText.WriteString(err.Error() + "\n")
	}
	places := map[string][]byte{
		"the bbolt file":   file,
		"the logs":         []byte(logs.String()),
		"the audit export": export.Bytes(),
		"an error":         []byte(errText.String()),
	}
	// The places hold what they should, so that finding nothing means
	// something: the leases and their references are all there.
	for _, want := range []struct{ place, s string }{
		{"the bbolt file", tok.Lease.Refs.TokenAccessor},
		{"the bbolt file", db.Lease.Refs.VaultLeaseID},
		{"the audit export", cert.Lease.ID},
		{"the logs", "mint failed"},
		{"an error", "unavailable"},
	} {
		if want.s == "" || !bytes.Contains(places[want.place], []byte(want.s)) {
			t.Errorf("%s does not hold %q: the scan would prove nothing", want.place, want.s)
		}
	}
	for what, v := range secrets {
		for place, b := range places {
			if bytes.Contains(b, []byte(v)) {
				t.Errorf("%s leaked into %s", what, place)
			}
		}
	}
	t.Logf("%d secret values looked for in %d bytes of bbolt file, %d of logs, %d of audit export and %d errors",
		len(secrets), len(file), len(logs.String()), export.Len(), len(errs))
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
