package broker

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/integration/vaultenv"
)

// TestService_Lifecycle issues one lease of each backend type through the
// Service, renews it up to its max TTL and no further, and releases it:
// each step checked in Vault and PostgreSQL.
func TestService_Lifecycle(t *testing.T) {
	e := setup(t)
	start := time.Now()
	agent := agentPrefix + "lifecycle-bot"
	const region, service = "a", "lifecycle"
	l := newLatch(t, e, latchOptions{})
	ctx := t.Context()

	t.Run("VaultToken", func(t *testing.T) {
		res := l.issue(t, agent, taskToken, map[string]string{"ticket": "42"})
		lease, token := res.Lease, res.Secret.Reveal()["token"]
		if lease.State != broker.StateActive || lease.Refs.TokenAccessor == "" || lease.Refs.Policy == "" {
			t.Fatalf("lease = %+v", lease)
		}
		if err := readTicket(ctx, t, token, "42"); err != nil {
			t.Fatalf("the token cannot read its ticket: %v", err)
		}
		if err := readTicket(ctx, t, token, "43"); vaultenv.StatusOf(err) != http.StatusForbidden {
			t.Fatalf("the token reads a sibling ticket: %v", err)
		}
		renewToMax(t, l, agent, lease, 0, func() time.Time { return e.tokenExpiry(t, lease.Refs.TokenAccessor) })
		release(t, l, agent, lease)
		if err := readTicket(ctx, t, token, "42"); vaultenv.StatusOf(err) != http.StatusForbidden {
			t.Fatalf("the released token still reads: %v", err)
		}
		if alive, err := e.TokenAlive(ctx, lease.Refs.TokenAccessor); err != nil || alive {
			t.Fatalf("released token alive=%v (%v)", alive, err)
		}
		// The shared policy outlives its last lease until the Service
		// collects it.
		if n, err := l.svc.Leases().CollectPolicies(ctx); err != nil || n == 0 {
			t.Fatalf("CollectPolicies = %d, %v; want the released lease's policy collected", n, err)
		}
		if ok, err := e.PolicyExists(ctx, lease.Refs.Policy); err != nil || ok {
			t.Fatalf("policy %s still exists after its collection (%v)", lease.Refs.Policy, err)
		}
	})

	t.Run("VaultLease", func(t *testing.T) {
		res := l.issue(t, agent, taskDB, map[string]string{"region": region})
		lease, creds := res.Lease, res.Secret.Reveal()
		if lease.Refs.VaultLeaseID == "" || lease.Refs.Group == "" || lease.Refs.MintAccessor != "" {
			t.Fatalf("refs = %+v, want a Vault lease read with the group's mint token", lease.Refs)
		}
		if err := pgLogin(ctx, creds["username"], creds["password"]); err != nil {
			t.Fatalf("log in with the minted credentials: %v", err)
		}
		// The database user lives as long as the earlier of its Vault
		// lease (the role's TTL is an hour) and the group's mint token
		// that created it, which may outlive the lease's max TTL by two
		// minutes: latch revokes it at the lease's expiry, Vault at the
		// token's if latch is down.
		renewToMax(t, l, agent, lease, 2*time.Minute, func() time.Time {
			s, err := e.Root.Logical().WriteWithContext(ctx, "sys/leases/lookup", map[string]any{"lease_id": lease.Refs.VaultLeaseID})
			if err != nil {
				t.Fatal(err)
			}
			exp, err := time.Parse(time.RFC3339Nano, s.Data["expire_time"].(string))
			if err != nil {
				t.Fatal(err)
			}
			return minTime(exp, e.tokenExpiry(t, lease.Refs.Group))
		})
		release(t, l, agent, lease)
		if err := pgLogin(ctx, creds["username"], creds["password"]); err == nil {
			t.Fatal("the released credentials still log in")
		}
		if users, err := e.PGRoles(ctx, dbRole(region)); err != nil || len(users) != 0 {
			t.Fatalf("PostgreSQL users left: %v (%v)", users, err)
		}
	})

	t.Run("VaultPKI", func(t *testing.T) {
		res := l.issue(t, agent, taskCert, map[string]string{"service": service})
		lease := res.Lease
		if lease.Refs.Serial == "" {
			t.Fatalf("refs = %+v", lease.Refs)
		}
		// Certificates cannot be renewed.
		if _, err := l.svc.Leases().Renew(ctx, agent, lease.ID, time.Minute); broker.ErrorCode(err) != broker.ECONFLICT {
			t.Fatalf("Renew(certificate) = %v, want %s", err, broker.ECONFLICT)
		}
		release(t, l, agent, lease)
		c, err := e.cert(ctx, lease.Refs.Serial)
		if err != nil || !c.Revoked {
			t.Fatalf("certificate %s revoked=%v (%v)", lease.Refs.Serial, c.Revoked, err)
		}
		crl, err := e.CRLSerials(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !crl[vaultenv.SerialHex(lease.Refs.Serial)] {
			t.Fatalf("certificate %s is not on the CRL", lease.Refs.Serial)
		}
	})

	evs := events(t, l.store)
	for _, lease := range leasesOf(t, l, agent) {
		got := eventsOf(evs, lease.ID)
		want := []broker.EventType{broker.EventIssue, broker.EventRenew, broker.EventRelease, broker.EventRevoked}
		if lease.Backend == "certs" {
			want = slices.Delete(want, 1, 2)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s lease %s: audit events %v, want %v", lease.Task, lease.ID, got, want)
		}
	}
	e.assertConsistent(t, l.store, scope{agent: agent, region: region, cn: service + ".svc.example.org", since: start})
}

// renewToMax renews lease asking for far more than its max TTL: latch
// and Vault extend it to the max TTL exactly, and a second renewal is
// refused. vaultExpiry reads the credential's expiry from Vault, which
// before the renewal is the lease's, or at most beyondMax past its max
// TTL when set.
func renewToMax(t *testing.T, l *latch, agent string, lease *broker.Lease, beyondMax time.Duration, vaultExpiry func() time.Time) {
	t.Helper()
	ctx := t.Context()
	before := vaultExpiry()
	switch d := before.Sub(lease.ExpiresAt); {
	case beyondMax > 0 && (d < -2*time.Second || before.After(lease.MaxExpiresAt.Add(beyondMax+2*time.Second))):
		t.Fatalf("Vault expiry %s, lease expiry %s: want between it and %s past the max %s", before, lease.ExpiresAt, beyondMax, lease.MaxExpiresAt)
	case beyondMax == 0 && (d > 2*time.Second || d < -2*time.Second):
		t.Fatalf("Vault expiry %s, lease expiry %s", before, lease.ExpiresAt)
	}
	time.Sleep(1100 * time.Millisecond) // so that a renewal shows in Vault's whole seconds
	renewed, err := l.svc.Leases().Renew(ctx, agent, lease.ID, time.Hour)
	if err != nil {
		t.Fatalf("Renew: %v", err)
	}
	after := vaultExpiry()
	max := lease.MaxExpiresAt
	if !renewed.ExpiresAt.After(lease.ExpiresAt) || renewed.ExpiresAt.After(max) {
		t.Fatalf("renewed lease expires %s: want after %s and not after the max %s", renewed.ExpiresAt, lease.ExpiresAt, max)
	}
	if (beyondMax == 0 && !after.After(before)) || after.After(max.Add(time.Second)) {
		t.Fatalf("Vault expiry after renewal %s: want after %s and not after the max %s", after, before, max)
	}
	if d := max.Sub(after); d > 3*time.Second {
		t.Fatalf("Vault expiry after renewal %s: %s short of the max %s", after, d, max)
	}
	t.Logf("renewed to %s short of the max TTL (Vault: %s short)", max.Sub(renewed.ExpiresAt).Round(time.Millisecond), max.Sub(after).Round(time.Millisecond))

	_, err = l.svc.Leases().Renew(ctx, agent, lease.ID, time.Hour)
	if broker.ErrorCode(err) != broker.ECONFLICT {
		t.Fatalf("second Renew at the max TTL = %v, want %s", err, broker.ECONFLICT)
	}
	if got := vaultExpiry(); got.After(max.Add(time.Second)) || got.Before(after.Add(-time.Second)) {
		t.Fatalf("Vault expiry after the refused renewal %s, was %s (max %s)", got, after, max)
	}
	if got := l.lease(t, lease.ID); got.ExpiresAt.After(max) {
		t.Fatalf("lease expires %s, past its max %s", got.ExpiresAt, max)
	}
}

// release releases lease as its agent and works the queue.
func release(t *testing.T, l *latch, agent string, lease *broker.Lease) {
	t.Helper()
	if err := l.svc.Leases().Release(t.Context(), agent+"-other", lease.ID); broker.ErrorCode(err) != broker.ENOTFOUND {
		t.Fatalf("Release by another agent = %v, want %s", err, broker.ENOTFOUND)
	}
	if err := l.svc.Leases().Release(t.Context(), agent, lease.ID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	l.drain(t)
	if got := l.lease(t, lease.ID); got.State != broker.StateRevoked {
		t.Fatalf("released lease is %s", got.State)
	}
	if err := l.svc.Leases().Release(t.Context(), agent, lease.ID); broker.ErrorCode(err) != broker.ECONFLICT {
		t.Fatalf("second Release = %v, want %s", err, broker.ECONFLICT)
	}
}

func leasesOf(t testing.TB, l *latch, agent string) []*broker.Lease {
	t.Helper()
	ls, err := l.store.Leases(context.Background(), broker.LeaseFilter{Agent: agent})
	if err != nil {
		t.Fatal(err)
	}
	return ls
}

// liveness checks that every lease of agents is alive in Vault exactly
// when it is active.
func liveness(t *testing.T, e *env, l *latch, agents ...string) {
	t.Helper()
	for _, a := range agents {
		for _, lease := range leasesOf(t, l, a) {
			alive, err := e.backends[lease.Backend].Lookup(t.Context(), lease.Refs)
			if err != nil {
				t.Fatalf("Lookup %s: %v", lease.ID, err)
			}
			if alive != (lease.State == broker.StateActive) {
				t.Errorf("%s lease %s (%s of %s): alive in Vault = %v", lease.State, lease.ID, lease.Task, a, alive)
			}
		}
	}
}

// tokenExpiry is when Vault will expire the token with this accessor.
func (e *env) tokenExpiry(t testing.TB, accessor string) time.Time {
	t.Helper()
	info, err := e.Root.Logical().WriteWithContext(context.Background(), "auth/token/lookup-accessor", map[string]any{"accessor": accessor})
	if err != nil {
		t.Fatal(err)
	}
	exp, err := time.Parse(time.RFC3339Nano, info.Data["expire_time"].(string))
	if err != nil {
		t.Fatal(err)
	}
	return exp
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// TestService_RevokeSelectors revokes by agent, template version, task and
// all, checking after each step that exactly the selected leases are gone
// from Vault and every other one still works.
func TestService_RevokeSelectors(t *testing.T) {
	e := setup(t)
	start := time.Now()
	ctx := t.Context()
	alice, bob := agentPrefix+"selector-alice", agentPrefix+"selector-bob"
	const region, service = "b", "selectors"
	l := newLatch(t, e, latchOptions{})
	ticket := map[string]string{"ticket": "42"}

	v1 := l.issue(t, alice, taskToken, ticket).Lease // close-ticket, version 1
	db := l.issue(t, alice, taskDB, map[string]string{"region": region}).Lease
	cert := l.issue(t, alice, taskCert, map[string]string{"service": service}).Lease
	bob1 := l.issue(t, bob, taskToken, ticket).Lease
	bobDB := l.issue(t, bob, taskDB, map[string]string{"region": region}).Lease

	// A config reload changes close-ticket: leases issued from now on
	// carry its new version.
	files := maps.Clone(templateFiles)
	files["close-ticket.yaml"] = strings.Replace(files["close-ticket.yaml"], "Read one ticket.", "Read one ticket (v2).", 1)
	p2, err := loadPolicy(files)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.svc.SetPolicy(ctx, p2, "test"); err != nil {
		t.Fatal(err)
	}
	v2 := l.issue(t, alice, taskToken, ticket).Lease
	bob2 := l.issue(t, bob, taskToken, ticket).Lease
	if v1.TemplateVersion == v2.TemplateVersion {
		t.Fatal("the reload did not change close-ticket's version")
	}
	liveness(t, e, l, alice, bob)

	steps := []struct {
		name    string
		sel     broker.RevokeSelector
		revoked []*broker.Lease
	}{
		{"Agent", broker.RevokeSelector{Agent: bob}, []*broker.Lease{bob1, bobDB, bob2}},
		{"TemplateVersion", broker.RevokeSelector{Template: taskToken, Version: v1.TemplateVersion}, []*broker.Lease{v1}},
		{"Task", broker.RevokeSelector{Task: taskDB}, []*broker.Lease{db}},
		{"All", broker.RevokeSelector{All: true}, []*broker.Lease{cert, v2}},
	}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			n, err := l.svc.Leases().Revoke(ctx, "spiffe://example.org/ops/alice", "test: revoke by "+step.name, step.sel)
			if err != nil {
				t.Fatal(err)
			}
			if n != len(step.revoked) {
				t.Fatalf("Revoke(%+v) queued %d leases, want %d", step.sel, n, len(step.revoked))
			}
			l.drain(t)
			for _, r := range step.revoked {
				if got := l.lease(t, r.ID); got.State != broker.StateRevoked {
					t.Errorf("lease %s (%s of %s) is %s", r.ID, r.Task, r.Agent, got.State)
				}
			}
			liveness(t, e, l, alice, bob)
		})
	}
	evs := events(t, l.store)
	for _, lease := range append(leasesOf(t, l, alice), leasesOf(t, l, bob)...) {
		checkRevokedTrail(t, evs, lease)
	}
	for _, a := range []string{alice, bob} {
		e.assertConsistent(t, l.store, scope{agent: a, region: region, cn: service + ".svc.example.org", since: start})
	}
}

// TestService_Quarantine quarantines an agent holding leases of every
// backend type: each token is dead in Vault, each database login is
// refused, each certificate is on the CRL, and the agent gets nothing new.
func TestService_Quarantine(t *testing.T) {
	e := setup(t)
	start := time.Now()
	ctx := t.Context()
	agent := agentPrefix + "quarantine-bot"
	const region, service = "g", "quarantine"
	l := newLatch(t, e, latchOptions{})

	type held struct {
		lease  *broker.Lease
		secret map[string]string
	}
	var tokens, logins, certs []held
	for _, ticket := range []string{"42", "43"} {
		res := l.issue(t, agent, taskToken, map[string]string{"ticket": ticket})
		tokens = append(tokens, held{res.Lease, res.Secret.Reveal()})
		if err := readTicket(ctx, t, res.Secret.Reveal()["token"], ticket); err != nil {
			t.Fatalf("token for ticket %s: %v", ticket, err)
		}
	}
	for range 2 {
		res := l.issue(t, agent, taskDB, map[string]string{"region": region})
		logins = append(logins, held{res.Lease, res.Secret.Reveal()})
		if err := pgLogin(ctx, res.Secret.Reveal()["username"], res.Secret.Reveal()["password"]); err != nil {
			t.Fatal(err)
		}
	}
	res := l.issue(t, agent, taskCert, map[string]string{"service": service})
	certs = append(certs, held{res.Lease, nil})

	if err := l.svc.Agents().SetState(ctx, "spiffe://example.org/ops/alice", agent, broker.AgentQuarantined, "leaked a token"); err != nil {
		t.Fatal(err)
	}
	_, err := l.svc.Issue(ctx, broker.IssueRequest{Agent: agent, Task: taskToken, Params: map[string]string{"ticket": "42"}})
	var be *broker.Error
	if !errors.As(err, &be) || be.Code != broker.EFORBIDDEN || !slices.Contains(be.Reasons, "agent_quarantined") {
		t.Fatalf("Issue while quarantined = %v, want forbidden with agent_quarantined", err)
	}
	l.drain(t)

	for _, h := range tokens {
		if err := readTicket(ctx, t, h.secret["token"], "42"); vaultenv.StatusOf(err) != http.StatusForbidden {
			t.Errorf("token of lease %s still reads: %v", h.lease.ID, err)
		}
		if _, err := agentClient(t, h.secret["token"]).Auth().Token().LookupSelfWithContext(ctx); vaultenv.StatusOf(err) != http.StatusForbidden {
			t.Errorf("token of lease %s: lookup-self = %v, want 403", h.lease.ID, err)
		}
		if alive, err := e.TokenAlive(ctx, h.lease.Refs.TokenAccessor); err != nil || alive {
			t.Errorf("token of lease %s alive=%v (%v)", h.lease.ID, alive, err)
		}
	}
	for _, h := range logins {
		if err := pgLogin(ctx, h.secret["username"], h.secret["password"]); err == nil {
			t.Errorf("database login of lease %s still works", h.lease.ID)
		} else {
			t.Logf("database login of lease %s refused: %v", h.lease.ID, err)
		}
	}
	crl, err := e.CRLSerials(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range certs {
		if !crl[vaultenv.SerialHex(h.lease.Refs.Serial)] {
			t.Errorf("certificate %s of lease %s is not on the CRL", h.lease.Refs.Serial, h.lease.ID)
		}
	}
	evs := events(t, l.store)
	quarantined := false
	for _, ev := range evs {
		quarantined = quarantined || (ev.Type == broker.EventQuarantine && ev.Subject == agent)
	}
	if !quarantined {
		t.Error("no quarantine event")
	}
	for _, lease := range leasesOf(t, l, agent) {
		if lease.State != broker.StateRevoked || !strings.HasPrefix(lease.RevokeReason, "agent quarantined") {
			t.Errorf("lease %s: %s, reason %q", lease.ID, lease.State, lease.RevokeReason)
		}
		checkRevokedTrail(t, evs, lease)
	}
	e.assertConsistent(t, l.store, scope{agent: agent, region: region, cn: service + ".svc.example.org", since: start})
}

// TestService_Expiry: a lease's TTL runs out and latch revokes it in Vault.
func TestService_Expiry(t *testing.T) {
	e := setup(t)
	ctx := t.Context()

	// latch's clock jumps past the TTL while Vault's objects would live
	// on for a minute: what goes is what latch revoked.
	t.Run("AtLatchsTTL", func(t *testing.T) {
		start := time.Now()
		agent := agentPrefix + "expiry-bot"
		const region, service = "f", "expiry"
		clk := &clock{}
		l := newLatch(t, e, latchOptions{now: clk.Now})
		var leases []*broker.Lease
		var token string
		var creds map[string]string
		for _, r := range []broker.IssueRequest{
			{Task: taskToken, Params: map[string]string{"ticket": "42"}},
			{Task: taskDB, Params: map[string]string{"region": region}},
			{Task: taskCert, Params: map[string]string{"service": service}},
		} {
			r.Agent, r.TTL = agent, time.Minute
			res, err := l.svc.Issue(ctx, r)
			if err != nil {
				t.Fatal(err)
			}
			leases = append(leases, res.Lease)
			switch r.Task {
			case taskToken:
				token = res.Secret.Reveal()["token"]
			case taskDB:
				creds = res.Secret.Reveal()
			}
		}
		if n, err := l.svc.Leases().Sweep(ctx); err != nil || n != 0 {
			t.Fatalf("Sweep before the TTL = %d, %v", n, err)
		}
		clk.Add(61 * time.Second)
		if n, err := l.svc.Leases().Sweep(ctx); err != nil || n != 3 {
			t.Fatalf("Sweep after the TTL = %d, %v; want 3", n, err)
		}
		l.drain(t)
		evs := events(t, l.store)
		for _, lease := range leases {
			if got := l.lease(t, lease.ID); got.State != broker.StateExpired {
				t.Errorf("lease %s is %s, want expired", lease.ID, got.State)
			}
			if got, want := eventsOf(evs, lease.ID), []broker.EventType{broker.EventIssue, broker.EventExpire, broker.EventExpire}; !slices.Equal(got, want) {
				t.Errorf("lease %s: audit events %v, want %v", lease.ID, got, want)
			}
		}
		if err := readTicket(ctx, t, token, "42"); vaultenv.StatusOf(err) != http.StatusForbidden {
			t.Errorf("expired token still reads: %v", err)
		}
		if err := pgLogin(ctx, creds["username"], creds["password"]); err == nil {
			t.Error("expired database login still works")
		}
		c, err := e.cert(ctx, leases[2].Refs.Serial)
		if err != nil || !c.Revoked || c.Expired {
			t.Errorf("certificate: revoked=%v expired=%v (%v); want revoked by latch before it expired", c.Revoked, c.Expired, err)
		}
		e.assertConsistent(t, l.store, scope{agent: agent, region: region, cn: service + ".svc.example.org", since: start})
	})

	// In real time, with Run sweeping every second: leases with a TTL of
	// 3 s end within a few seconds of it.
	t.Run("RunLoop", func(t *testing.T) {
		start := time.Now()
		agent := agentPrefix + "expiry-loop-bot"
		const region, service = "h", "expiry-loop"
		l := newLatch(t, e, latchOptions{})
		runCtx, stop := context.WithCancel(context.Background())
		done := make(chan error, 1)
		ready := make(chan struct{})
		go func() { done <- l.svc.Run(runCtx, ready) }()
		defer func() {
			stop()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}()
		<-ready
		const ttl = 3 * time.Second
		var leases []*broker.Lease
		for _, r := range []broker.IssueRequest{
			{Task: taskToken, Params: map[string]string{"ticket": "42"}},
			{Task: taskDB, Params: map[string]string{"region": region}},
			{Task: taskCert, Params: map[string]string{"service": service}},
		} {
			r.Agent, r.TTL = agent, ttl
			res, err := l.svc.Issue(ctx, r)
			if err != nil {
				t.Fatal(err)
			}
			leases = append(leases, res.Lease)
		}
		vaultenv.Eventually(t, ttl+10*time.Second, func() error {
			for _, lease := range leases {
				if got := l.lease(t, lease.ID); got.State != broker.StateExpired {
					return fmt.Errorf("lease %s (%s) is %s", lease.ID, lease.Task, got.State)
				}
			}
			return nil
		})
		for _, lease := range leases {
			got := l.lease(t, lease.ID)
			late := got.EndedAt.Sub(got.ExpiresAt)
			t.Logf("%s lease expired %s after its TTL", lease.Task, late.Round(time.Millisecond))
			if late > 4*time.Second {
				t.Errorf("%s lease ended %s after its expiry", lease.Task, late)
			}
		}
		e.assertConsistent(t, l.store, scope{agent: agent, region: region, cn: service + ".svc.example.org", since: start})
	})
}
