package broker

import (
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/integration/vaultenv"
)

// countMetrics counts what the audit tests look at.
type countMetrics struct {
	auditFailed atomic.Int64
}

func (*countMetrics) RequestDone(string, string, time.Duration) {}
func (*countMetrics) Violation(string)                          {}
func (*countMetrics) RevocationDone(string)                     {}
func (*countMetrics) QueueDepth(int)                            {}
func (m *countMetrics) AuditAppendFailed()                      { m.auditFailed.Add(1) }
func (m *countMetrics) StoreWrite(time.Duration)                {}

// TestAuditFailure_RevokesMinted makes the commit of an issued lease —
// the lease record with its audit event — fail after the backend minted
// the secret, for each backend type: at once (a full or read-only disk),
// or by hanging past the audit deadline (a stuck disk). Issue must return
// no secret, within its deadline, with an unavailable error, and the
// minted credential must be dead in Vault right away; a restart's
// reconciliation then closes the intent (invariant 5).
func TestAuditFailure_RevokesMinted(t *testing.T) {
	e := setup(t)
	ctx := t.Context()
	start := time.Now()
	agent := agentPrefix + "auditfail-bot"
	const region, service = "k", "auditfail"
	const auditTimeout = 2 * time.Second
	failing := &failCommit{}
	metrics := &countMetrics{}
	l := newLatch(t, e, latchOptions{
		wrap: func(s broker.Store) broker.Store { failing.Store = s; return failing },
		cfg: func(c *broker.Config) {
			c.AuditTimeout = auditTimeout
			c.Metrics = metrics
		},
	})

	cases := []struct {
		name, mode, task string
		params           map[string]string
	}{
		{"VaultToken", "error", taskToken, map[string]string{"ticket": "42"}},
		{"VaultLease", "error", taskDB, map[string]string{"region": region}},
		{"VaultPKI", "error", taskCert, map[string]string{"service": service}},
		{"VaultToken/Hang", "hang", taskToken, map[string]string{"ticket": "43"}},
	}
	var failedLeases []string
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before, err := l.store.Intents(ctx)
			if err != nil {
				t.Fatal(err)
			}
			failing.arm(tc.mode)
			began := time.Now()
			res, err := l.svc.Issue(ctx, broker.IssueRequest{Agent: agent, Task: tc.task, Params: tc.params})
			took := time.Since(began)
			failing.arm("")
			if res != nil || err == nil {
				t.Fatalf("Issue with a failing audit log = %+v, %v; want no result", res, err)
			}
			var be *broker.Error
			if !errors.As(err, &be) || be.Code != broker.EUNAVAILABLE {
				t.Fatalf("Issue error = %v, want %s", err, broker.EUNAVAILABLE)
			}
			if limit := auditTimeout + 5*time.Second; took > limit {
				t.Fatalf("Issue took %s, past %s", took, limit)
			}
			t.Logf("Issue failed closed after %s: %v", took.Round(time.Millisecond), err)

			// The intent stays (with the refs Prepare recorded) for
			// reconciliation; the secret is already dead in Vault.
			after, err := l.store.Intents(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(after) != len(before)+1 {
				t.Fatalf("%d intents, want %d", len(after), len(before)+1)
			}
			in := after[len(after)-1]
			for _, a := range after {
				if !slices.ContainsFunc(before, func(b *broker.Lease) bool { return b.ID == a.ID }) {
					in = a
				}
			}
			failedLeases = append(failedLeases, in.ID)
			if _, err := l.store.Lease(ctx, in.ID); !errors.Is(err, broker.ErrLeaseNotFound) {
				t.Fatalf("lease %s was committed: %v", in.ID, err)
			}
			switch tc.task {
			case taskToken:
				toks, err := e.LatchTokens(ctx, agent)
				if err != nil {
					t.Fatal(err)
				}
				for _, tok := range toks {
					if tok.Lease == in.ID {
						t.Fatalf("the minted token %s of lease %s is alive", tok.Accessor, in.ID)
					}
				}
				// Its shared policy is left for the Service's collection.
			case taskDB:
				// Vault drops the user asynchronously once its mint
				// token is revoked.
				vaultenv.Eventually(t, 20*time.Second, func() error {
					users, err := e.PGRoles(ctx, dbRole(region))
					if err == nil && len(users) > 0 {
						err = errors.New("database users left: " + users[0])
					}
					return err
				})
				if vls, err := e.DBLeases(ctx, dbRole(region)); err != nil || len(vls) > 0 {
					t.Fatalf("Vault leases left: %v (%v)", vls, err)
				}
			case taskCert:
				vaultenv.Eventually(t, 20*time.Second, func() error {
					certs, err := e.certsFor(ctx, service+".svc.example.org")
					if err != nil {
						return err
					}
					if len(certs) != 1 {
						return errors.New("want exactly one certificate issued")
					}
					if !certs[0].Revoked {
						return errors.New("the minted certificate " + certs[0].Serial + " is not revoked")
					}
					return nil
				})
			}
			if alive, err := e.TokenAlive(ctx, in.Refs.MintAccessor); in.Refs.MintAccessor != "" && (err != nil || alive) {
				t.Fatalf("mint token alive=%v (%v)", alive, err)
			}
		})
	}
	if n := metrics.auditFailed.Load(); n != int64(len(cases)) {
		t.Errorf("AuditAppendFailed counted %d times, want %d", n, len(cases))
	}

	// A restart: reconciliation closes every intent, revoking again
	// (harmlessly) what was revoked already.
	if err := l.svc.Leases().Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	l.drain(t)
	evs := events(t, l.store)
	for _, id := range failedLeases {
		if got := l.lease(t, id); got.State != broker.StateRevoked {
			t.Errorf("lease %s is %s after reconciliation", id, got.State)
		}
		if got, want := eventsOf(evs, id), []broker.EventType{broker.EventReconcile, broker.EventRevoked}; !slices.Equal(got, want) {
			t.Errorf("lease %s: audit events %v, want %v (never an issue event)", id, got, want)
		}
	}
	e.assertConsistent(t, l.store, scope{agent: agent, region: region, cn: service + ".svc.example.org", since: start})

	// The audit log works again, and so does issuing.
	res := l.issue(t, agent, taskToken, map[string]string{"ticket": "42"})
	if err := readTicket(ctx, t, res.Secret.Reveal()["token"], "42"); err != nil {
		t.Fatalf("token issued after the failure: %v", err)
	}
}
