package broker

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/oklog/ulid/v2"

	"github.com/latchbroker/latch/backends/vaulttoken"
	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/boltstore"
	"github.com/latchbroker/latch/broker/brokertest"
	"github.com/latchbroker/latch/integration/vaultenv"
)

const agentPrefix = "spiffe://example.org/agent/"

// clock is a real clock that a test can move ahead, to make latch think a
// lease's TTL has passed while Vault's has not.
type clock struct {
	mu   sync.Mutex
	skew time.Duration
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.skew)
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.skew += d
}

// latch is one broker.Service on a bbolt file in a temporary directory,
// with the real backends.
type latch struct {
	svc    *broker.Service
	store  *boltstore.Store
	dbPath string
	logs   *brokertest.SyncBuffer
}

type latchOptions struct {
	now      func() time.Time
	wrap     func(broker.Store) broker.Store // wraps the bbolt store
	backends map[string]broker.Backend       // default: the env's
	logger   *slog.Logger                    // default: JSON into latch.logs at debug level
	cfg      func(*broker.Config)
}

func newLatch(t testing.TB, e *env, o latchOptions) *latch {
	t.Helper()
	l := &latch{dbPath: filepath.Join(t.TempDir(), "latch.db"), logs: &brokertest.SyncBuffer{}}
	bs, err := boltstore.Open(l.dbPath, boltstore.Options{Now: o.now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bs.Close() })
	l.store = bs
	var store broker.Store = bs
	if o.wrap != nil {
		store = o.wrap(bs)
	}
	policy, err := loadPolicy(nil)
	if err != nil {
		t.Fatal(err)
	}
	if o.backends == nil {
		o.backends = e.ownBackends(t)
	}
	if o.logger == nil {
		o.logger = slog.New(slog.NewJSONHandler(l.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	cfg := broker.Config{
		Store:        store,
		Policy:       policy,
		Backends:     o.backends,
		Logger:       o.logger,
		Now:          o.now,
		AuditTimeout: 2 * time.Second,
		MintTimeout:  20 * time.Second,
		RetryBase:    200 * time.Millisecond,
		RetryMax:     2 * time.Second,
		MaxAttempts:  100,
	}
	if o.cfg != nil {
		o.cfg(&cfg)
	}
	l.svc, err = broker.NewService(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func (l *latch) issue(t testing.TB, agent, task string, params map[string]string) *broker.Issued {
	t.Helper()
	res, err := l.svc.Issue(t.Context(), broker.IssueRequest{Agent: agent, Task: task, Params: params, Reason: "integration test"})
	if err != nil {
		t.Fatalf("Issue(%s, %s, %v): %v", agent, task, params, err)
	}
	return res
}

// drain works the revocation queue until it is empty.
func (l *latch) drain(t testing.TB) {
	t.Helper()
	drainStore(t, l.svc, l.store, 60*time.Second)
}

func drainStore(t testing.TB, svc *broker.Service, store broker.Store, timeout time.Duration) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(timeout)
	for {
		if _, err := svc.Leases().ProcessRevocations(ctx); err != nil {
			t.Fatalf("ProcessRevocations: %v", err)
		}
		n, err := store.QueueDepth(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s, %d revocations are still queued", timeout, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (l *latch) lease(t testing.TB, id string) *broker.Lease {
	t.Helper()
	got, err := l.store.Lease(context.Background(), id)
	if err != nil {
		t.Fatalf("lease %s: %v", id, err)
	}
	return got
}

// events returns the verified audit chain.
func events(t testing.TB, store broker.Store) []broker.Event {
	t.Helper()
	var evs []broker.Event
	var v broker.ChainVerifier
	err := store.Events(context.Background(), 0, func(e broker.Event) (bool, error) {
		if err := v.Next(e); err != nil {
			return false, err
		}
		evs = append(evs, e)
		return true, nil
	})
	if err != nil {
		t.Fatalf("audit chain: %v", err)
	}
	return evs
}

// eventsOf returns the types of the events about lease, in order.
func eventsOf(evs []broker.Event, lease string) []broker.EventType {
	var out []broker.EventType
	for _, e := range evs {
		if e.Lease == lease {
			out = append(out, e.Type)
		}
	}
	return out
}

// checkRevokedTrail fails unless lease's audit trail is its issue, the
// revocation queued — for the lease itself, or for its group when a
// revocation by agent, task, template or all took the group — and its
// revoked event naming who asked.
func checkRevokedTrail(t testing.TB, evs []broker.Event, lease *broker.Lease) {
	t.Helper()
	var own []broker.EventType
	queuedForGroup := false
	for _, e := range evs {
		switch {
		case e.Lease == lease.ID:
			own = append(own, e.Type)
			if e.Type == broker.EventRevoked && e.Details["requested_by"] == "" {
				t.Errorf("lease %s: revoked event %d names nobody who asked", lease.ID, e.Seq)
			}
		case e.Type == broker.EventRevoke && e.Lease == "" && lease.Refs.Group != "" && e.Details["group"] == lease.Refs.Group:
			queuedForGroup = len(own) == 1 // after the issue, before the revoked
		}
	}
	want := []broker.EventType{broker.EventIssue, broker.EventRevoke, broker.EventRevoked}
	if queuedForGroup {
		want = []broker.EventType{broker.EventIssue, broker.EventRevoked}
	}
	if !slices.Equal(own, want) {
		t.Errorf("lease %s (group %q, queued by group: %v): audit events %v, want %v", lease.ID, lease.Refs.Group, queuedForGroup, own, want)
	}
}

// ---- Vault and PostgreSQL probes (root's view) ----

// agentClient is a Vault client acting as the agent holding token.
func agentClient(tb testing.TB, token string) *vaultapi.Client {
	tb.Helper()
	c, err := setup(tb).ClientWithToken(token)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// readTicket reads the ticket a close-ticket token was minted for; nil
// when the token works.
func readTicket(ctx context.Context, tb testing.TB, token, ticket string) error {
	_, err := agentClient(tb, token).KVv2("secret").Get(ctx, "tickets/"+ticket)
	return err
}

// pgLogin logs in as user; nil when the credentials work.
func pgLogin(ctx context.Context, user, password string) error {
	e, err := setupOnce()
	if err != nil {
		return err
	}
	who, err := e.PGLogin(ctx, user, password)
	if err == nil && who != user {
		err = fmt.Errorf("logged in as %q, want %q", who, user)
	}
	return err
}

// vaultCert is a certificate the PKI mount issued.
type vaultCert struct {
	Serial  string // colon-separated, as latch records it
	CN      string
	Revoked bool
	Expired bool
}

// certsFor lists the certificates of the PKI mount issued for cn.
func (e *env) certsFor(ctx context.Context, cn string) ([]vaultCert, error) {
	s, err := e.Root.Logical().ListWithContext(ctx, pkiMount+"/certs")
	if err != nil || s == nil {
		return nil, err
	}
	var out []vaultCert
	keys, _ := s.Data["keys"].([]any)
	for _, k := range keys {
		c, err := e.cert(ctx, fmt.Sprint(k))
		if err != nil {
			return nil, err
		}
		if c.CN == cn {
			out = append(out, c)
		}
	}
	return out, nil
}

func (e *env) cert(ctx context.Context, serial string) (vaultCert, error) {
	serial = strings.ReplaceAll(serial, "-", ":")
	s, err := e.Root.Logical().ReadWithContext(ctx, pkiMount+"/cert/"+serial)
	if err != nil {
		return vaultCert{}, err
	}
	if s == nil {
		return vaultCert{}, fmt.Errorf("certificate %s not found", serial)
	}
	block, _ := pem.Decode([]byte(fmt.Sprint(s.Data["certificate"])))
	if block == nil {
		return vaultCert{}, fmt.Errorf("certificate %s is not PEM", serial)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return vaultCert{}, err
	}
	c := vaultCert{Serial: serial, CN: cert.Subject.CommonName, Expired: time.Now().After(cert.NotAfter)}
	if rt, ok := s.Data["revocation_time"].(json.Number); ok {
		n, _ := rt.Int64()
		c.Revoked = n > 0
	}
	return c, nil
}

// ---- consistency between the store and Vault (invariant 3) ----

// scope says which Vault objects a consistency check owns: those of one
// agent (tokens by metadata), of one database role, of one certificate
// common name, and latch-<lease> policies whose lease ID is younger than
// since.
type scope struct {
	agent  string
	region string // database role report-<region>; "" when none
	cn     string // certificate common name; "" when none
	since  time.Time
}

// consistent checks that store and Vault agree for sc: every reconciled
// intent and queued revocation is done; every active lease's Vault
// objects exist and every ended lease's are gone; and every Vault object
// of sc belongs to an active lease. notes lists the tolerated leftovers:
// a vault-token agent token whose accessor was never recorded (latch died
// between Mint and commit), made powerless by deleting its only policy and
// bounded by the lease TTL, as backends/doc.go describes.
func (e *env) consistent(ctx context.Context, store broker.Store, sc scope) (notes []string, err error) {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	intents, err := store.Intents(ctx)
	if err != nil {
		return nil, err
	}
	for _, l := range intents {
		bad("intent %s (%s) was never reconciled", l.ID, l.Task)
	}
	if n, err := store.QueueDepth(ctx); err != nil {
		return nil, err
	} else if n > 0 {
		bad("%d revocations still queued", n)
	}
	leases, err := store.Leases(ctx, broker.LeaseFilter{Agent: sc.agent})
	if err != nil {
		return nil, err
	}
	byID := map[string]*broker.Lease{}
	for _, l := range leases {
		byID[l.ID] = l
		switch l.State {
		case broker.StateActive, broker.StateRevoked, broker.StateExpired, broker.StateFailed:
		default:
			bad("lease %s is still %s", l.ID, l.State)
		}
		alive, err := e.backends[l.Backend].Lookup(ctx, l.Refs)
		if err != nil {
			return nil, fmt.Errorf("look up lease %s: %w", l.ID, err)
		}
		if l.State == broker.StateActive && !alive {
			bad("active lease %s (%s) has no Vault object (refs %+v)", l.ID, l.Task, l.Refs)
		}
		if l.State != broker.StateActive && alive {
			bad("%s lease %s (%s) still has its Vault object (refs %+v)", l.State, l.ID, l.Task, l.Refs)
		}
	}
	active := func(id string) *broker.Lease {
		if l := byID[id]; l != nil && l.State == broker.StateActive {
			return l
		}
		return nil
	}

	// Tokens: agent tokens (vault-token) and mint tokens (vault-lease,
	// vault-pki).
	toks, err := e.LatchTokens(ctx, sc.agent)
	if err != nil {
		return nil, err
	}
	for _, tok := range toks {
		l := byID[tok.Lease]
		switch {
		case l == nil:
			bad("token %s (%s, lease %s) has no lease", tok.Accessor, tok.DisplayName, tok.Lease)
		case active(tok.Lease) != nil && (l.Refs.TokenAccessor == tok.Accessor || l.Refs.MintAccessor == tok.Accessor):
		case l.Backend == "tokens" && l.State != broker.StateActive && l.Refs.TokenAccessor == "" &&
			slices.Equal(tok.Policies, []string{l.Refs.Policy}):
			// A crashed mint's token, never delivered: latch never learnt
			// its accessor. Its shared policy is collected unless an
			// active lease renders the same; either way it expires within
			// the lease TTL (the restated guarantee).
			exists, err := e.PolicyExists(ctx, tok.Policies[0])
			if err != nil {
				return nil, err
			}
			switch {
			case tok.TTL > l.MaxExpiresAt.Sub(l.IssuedAt):
				bad("orphaned token %s of lease %s lives %s, past the lease TTL", tok.Accessor, l.ID, tok.TTL)
			case exists:
				notes = append(notes, fmt.Sprintf("token %s of %s lease %s (accessor never recorded) keeps the policy an active lease shares; it expires in %s",
					tok.Accessor, l.State, l.ID, tok.TTL))
			default:
				notes = append(notes, fmt.Sprintf("token %s of %s lease %s (accessor never recorded) is powerless: its policy was collected; it expires in %s",
					tok.Accessor, l.State, l.ID, tok.TTL))
			}
		default:
			bad("token %s (%s, policies %v) of %s lease %s is alive", tok.Accessor, tok.DisplayName, tok.Policies, l.State, l.ID)
		}
	}

	pols, err := e.LatchPolicies(ctx)
	if err != nil {
		return nil, err
	}
	// Shared policies belong to installations (the tests' latches each
	// have their own) and are collected on the Service's schedule: what
	// must hold is that no active lease's policy is gone.
	for _, l := range leases {
		if l.State == broker.StateActive && strings.HasPrefix(l.Refs.Policy, vaulttoken.SharedPrefix) && !slices.Contains(pols, l.Refs.Policy) {
			bad("active lease %s has lost its shared policy %s", l.ID, l.Refs.Policy)
		}
	}
	for _, p := range pols {
		if strings.HasPrefix(p, vaulttoken.SharedPrefix) {
			continue
		}
		id := strings.ToUpper(strings.TrimPrefix(p, vaulttoken.PolicyPrefix))
		if l, ok := byID[id]; ok {
			if active(id) == nil || l.Refs.Policy != p {
				bad("policy %s of %s lease %s exists", p, l.State, id)
			}
			continue
		}
		u, err := ulid.ParseStrict(id)
		if err != nil {
			bad("policy %s does not name a lease", p)
			continue
		}
		if !ulid.Time(u.Time()).Before(sc.since) {
			bad("policy %s has no lease", p)
		}
	}

	if sc.region != "" {
		role := dbRole(sc.region)
		vls, err := e.DBLeases(ctx, role)
		if err != nil {
			return nil, err
		}
		want := 0
		activeVL := map[string]bool{}
		for _, l := range leases {
			if l.State == broker.StateActive && l.Backend == "app-db" && l.Params["region"] == sc.region {
				want++
				activeVL[l.Refs.VaultLeaseID] = true
			}
		}
		for _, vl := range vls {
			if !activeVL[vl] {
				bad("Vault lease %s has no active lease", vl)
			}
		}
		users, err := e.PGRoles(ctx, role)
		if err != nil {
			return nil, err
		}
		if len(users) != want {
			bad("PostgreSQL has %d users of role %s %v, want %d (one per active lease)", len(users), role, users, want)
		}
	}

	if sc.cn != "" {
		certs, err := e.certsFor(ctx, sc.cn)
		if err != nil {
			return nil, err
		}
		activeSerial := map[string]bool{}
		for _, l := range leases {
			if l.State == broker.StateActive && l.Refs.Serial != "" {
				activeSerial[l.Refs.Serial] = true
			}
		}
		for _, c := range certs {
			if !c.Revoked && !c.Expired && !activeSerial[c.Serial] {
				bad("certificate %s (%s) is valid and not on the CRL, with no active lease", c.Serial, c.CN)
			}
			if c.Revoked && activeSerial[c.Serial] {
				bad("certificate %s of an active lease is revoked", c.Serial)
			}
		}
	}
	if len(problems) > 0 {
		return notes, errors.New(strings.Join(problems, "\n\t"))
	}
	return notes, nil
}

// assertConsistent waits (Vault revokes a token's leases asynchronously)
// until consistent holds, and logs the tolerated leftovers.
func (e *env) assertConsistent(t testing.TB, store broker.Store, sc scope) {
	t.Helper()
	var notes []string
	vaultenv.Eventually(t, 30*time.Second, func() error {
		var err error
		notes, err = e.consistent(context.Background(), store, sc)
		if err != nil {
			return fmt.Errorf("store and Vault disagree:\n\t%w", err)
		}
		return nil
	})
	for _, n := range notes {
		t.Log(n)
	}
}

// errDiskFull is what failCommit returns: what a store on a full disk
// reports.
var errDiskFull = fmt.Errorf("write latch.db: no space left on device: %w", broker.ErrStoreUnavailable)

// failCommit is a Store whose Apply fails the commit of an issued lease
// (the change that stores the active lease and its issue event) while
// armed: "error" fails at once as a full or read-only disk does, "hang"
// blocks until the Service's audit deadline, as a stuck disk does.
type failCommit struct {
	broker.Store
	mode atomic.Value // string
}

func (f *failCommit) arm(mode string) { f.mode.Store(mode) }

func (f *failCommit) Apply(ctx context.Context, c broker.Change) ([]broker.Event, error) {
	mode, _ := f.mode.Load().(string)
	commit := len(c.DeleteIntents) > 0 && len(c.PutLeases) > 0 && c.PutLeases[0].State == broker.StateActive
	if mode == "" || !commit {
		return f.Store.Apply(ctx, c)
	}
	if mode == "hang" {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return nil, errDiskFull
}

// ownBackends are backends on a Vault client of the test's own
// installation (vault.Config.Owner): every latch of these tests shares
// one Vault, and each collects the shared policies its own store does not
// name, as two latches sharing a Vault would.
func (e *env) ownBackends(t testing.TB) map[string]broker.Backend {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := vaultConfig(st.Vault.Addr, e.RoleIDFile, e.SecretIDFile, nil)
	cfg.Owner = t.Name()
	c, err := e.Login(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	b, err := newBackends(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
