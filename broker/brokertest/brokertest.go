// Package brokertest has the test doubles every package that tests the
// broker Service shares: a fake Backend that mints a canary secret, a
// settable clock, a policy loader for YAML written in a test, and a
// buffer that a logger or a child process writes while the test reads.
package brokertest

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/templates"
)

// Canary is the password the fake backend mints: tests scan stores, logs,
// errors and responses for it (invariant 1).
const Canary = "CANARY-s3cr3t-7f3a9c"

// Backend is a broker.Backend (and Renewer) in memory. It mints
// {"username": "u-<lease>", "password": Canary} unless Fields says
// otherwise, and records what it was asked to do.
type Backend struct {
	// Fields, if set, gives the secret minted for a lease.
	Fields func(leaseID string) map[string]string

	Mints, Revokes atomic.Int64

	mu        sync.Mutex
	alive     map[string]bool // lease ID → credential exists
	mintErr   error
	revokeErr error
	gate      chan struct{} // when set, Mint waits until it is closed
	entered   chan string   // Mint sends its lease ID here before waiting
}

// Block makes every Mint from now on wait until release is called, after
// creating its credential (as a slow backend would: the secret exists,
// the answer has not arrived). Each blocked Mint first sends its lease ID
// on entered, which holds up to 1024 of them.
func (f *Backend) Block() (entered <-chan string, release func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	gate, ch := make(chan struct{}), make(chan string, 1024)
	f.gate, f.entered = gate, ch
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			f.mu.Lock()
			if f.gate == gate {
				f.gate, f.entered = nil, nil
			}
			f.mu.Unlock()
			close(gate)
		})
	}
}

var _ broker.Renewer = (*Backend)(nil)

// NewBackend returns a Backend with nothing minted.
func NewBackend() *Backend { return &Backend{alive: map[string]bool{}} }

// Mint implements broker.Backend. The credential outlives any test TTL, so
// latch's own TTL is what ends it.
func (f *Backend) Mint(_ context.Context, req broker.MintRequest) (broker.Minted, error) {
	f.Mints.Add(1)
	f.mu.Lock()
	if f.mintErr != nil {
		f.mu.Unlock()
		return broker.Minted{}, f.mintErr
	}
	f.alive[req.LeaseID] = true
	gate, entered := f.gate, f.entered
	f.mu.Unlock()
	if gate != nil {
		entered <- req.LeaseID
		<-gate
	}
	fields := map[string]string{"username": "u-" + req.LeaseID, "password": Canary}
	if f.Fields != nil {
		fields = f.Fields(req.LeaseID)
	}
	return broker.Minted{
		Secret:    broker.NewSecret(fields),
		Refs:      broker.Refs{TokenAccessor: "acc-" + req.LeaseID},
		ExpiresAt: time.Now().Add(24 * time.Hour),
	}, nil
}

// Revoke implements broker.Backend.
func (f *Backend) Revoke(_ context.Context, refs broker.Refs) error {
	f.Revokes.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.revokeErr != nil {
		return f.revokeErr
	}
	f.alive[strings.TrimPrefix(refs.TokenAccessor, "acc-")] = false
	return nil
}

// Lookup implements broker.Backend.
func (f *Backend) Lookup(_ context.Context, refs broker.Refs) (bool, error) {
	return f.Alive(strings.TrimPrefix(refs.TokenAccessor, "acc-")), nil
}

// Renew implements broker.Renewer: it grants whatever is asked.
func (f *Backend) Renew(context.Context, broker.Refs, time.Duration) (time.Time, error) {
	return time.Time{}, nil
}

// Alive reports whether the lease's credential exists.
func (f *Backend) Alive(leaseID string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.alive[leaseID]
}

// MarkAlive records a credential as existing, as a crash would leave it.
func (f *Backend) MarkAlive(leaseID string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.alive[leaseID] = true
}

// MarkDead records a credential as gone, as a backend that revoked it
// along with others (a group) would leave it.
func (f *Backend) MarkDead(leaseID string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.alive[leaseID] = false
}

// SetErrors makes Mint and Revoke fail with these errors (nil: succeed).
func (f *Backend) SetErrors(mintErr, revokeErr error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mintErr, f.revokeErr = mintErr, revokeErr
}

// Clock is a settable clock for broker.Config.Now.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a clock standing at t.
func NewClock(t time.Time) *Clock { return &Clock{now: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Add moves the clock.
func (c *Clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// Set puts the clock at t.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

// LoadPolicy compiles policy YAML (operators, agents, freeze_windows,
// risk_tiers) and templates (file name → YAML), all using the backend
// named "fake".
func LoadPolicy(tb testing.TB, policy string, tmpls map[string]string) *templates.Policy {
	tb.Helper()
	pc, err := templates.ParsePolicy("policy.yaml", []byte(policy))
	if err != nil {
		tb.Fatal(err)
	}
	src := templates.Source{Policy: pc, Backends: map[string]templates.Backend{"fake": {Type: "fake"}}}
	for name, body := range tmpls {
		src.Templates = append(src.Templates, templates.File{Name: name, Data: []byte(body)})
	}
	p, err := templates.Load(src)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// Policy is the policy the Service's tests share: agents of every kind
// (a prefix entry, rate-limited, budgeted), operators of every role, and a
// monthly freeze window. Its templates use the backend "fake".
const Policy = `
operators:
  - { id: spiffe://example.org/ops/alice, roles: [revoker] }
  - { id: spiffe://example.org/ops/vera, roles: [viewer] }
  - { id: spiffe://example.org/ops/rex, roles: [revoker] }
  - { id: spiffe://example.org/ops/ada, roles: [admin] }
  - { id: spiffe://example.org/ops/abe, roles: [approver] }
agents:
  - id: spiffe://example.org/agent/report-*
    owner: spiffe://example.org/ops/bob
    templates: [report]
  - id: spiffe://example.org/agent/ticket-bot
    owner: spiffe://example.org/ops/bob
    templates: [ticket, report]
  - id: spiffe://example.org/agent/chatty
    owner: spiffe://example.org/ops/bob
    templates: [report]
    rate: 2/m
  - id: spiffe://example.org/agent/hoarder
    owner: spiffe://example.org/ops/bob
    templates: [report, budgeted]
    max_active: 2
freeze_windows:
  billing-close: { cron: "0 0 28 * *", duration: 120h, timezone: Europe/Berlin }
`

// Templates are Policy's templates: report (low, frozen during
// billing-close), ticket (high: needs approval), budgeted (max_active 1).
var Templates = map[string]string{
	"budgeted.yaml": `
name: budgeted
description: One at a time.
backend: fake
params:
  region: { enum: [eu, us] }
ttl: 10m
max_ttl: 10m
risk: low
max_active: 1
`,
	"report.yaml": `
name: report
description: Read one region's sales tables.
backend: fake
params:
  region: { enum: [eu, us] }
ttl: 10m
max_ttl: 30m
risk: low
windows:
  - { window: billing-close, effect: deny }
`,
	"ticket.yaml": `
name: ticket
description: Touch one ticket; needs approval.
backend: fake
params:
  ticket: { pattern: "^[0-9]{1,9}$" }
ttl: 5m
max_ttl: 5m
risk: high
`,
}

// LoadTestPolicy compiles Policy and Templates.
func LoadTestPolicy(tb testing.TB) *templates.Policy { return LoadPolicy(tb, Policy, Templates) }

// SyncBuffer is a bytes.Buffer safe for concurrent writes and reads: a
// log sink or a process's output that a test reads while it is written.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
