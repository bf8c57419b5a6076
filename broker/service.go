package broker

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/latchbroker/latch/internal/buckets"
	"github.com/latchbroker/latch/templates"
)

// Config wires a Service. Store, Policy and Backends are required.
type Config struct {
	Store    Store
	Policy   *templates.Policy
	Backends map[string]Backend // by the name used in backends: and templates

	Logger  *slog.Logger
	Metrics Metrics
	Now     func() time.Time // the clock; time.Now by default

	// MintTimeout bounds one backend Mint (default 30 s). AuditTimeout
	// bounds writing a decision to the store: past it the request fails
	// closed instead of hanging (default 5 s).
	MintTimeout  time.Duration
	AuditTimeout time.Duration

	// Revocation queue: retries back off from RetryBase to RetryMax with
	// jitter; after MaxAttempts a lease is marked irrevocable (and still
	// retried at RetryMax). RevokeConcurrency bounds concurrent backend
	// calls. Defaults: 1 s, 5 min, 10, 8.
	RetryBase         time.Duration
	RetryMax          time.Duration
	MaxAttempts       int
	RevokeConcurrency int

	// Approvals: a pending approval expires when no decision is reached
	// within ApprovalTTL; an approved one must be picked up within
	// PickupTTL of its approval, or it expires unused. Defaults: 1 h,
	// 15 min.
	ApprovalTTL time.Duration
	PickupTTL   time.Duration

	// ReconcileEvery is how often Run looks for intents that no live
	// request owns (default 1 min); it also reconciles at start.
	ReconcileEvery time.Duration

	// Replica names this process among the latch replicas that share the
	// store (empty when it has the store to itself); its intents carry the
	// name. LiveReplicas, when set, names the replicas alive now: the
	// duties (RunDuties) reconcile the intents of the others, and each
	// replica its own (RunReplica). Name each start of a process anew: a
	// restarted replica does not own its predecessor's requests.
	Replica      string
	LiveReplicas func(context.Context) (map[string]bool, error)

	// KeepEnded, when positive, is how long the record of an ended lease
	// is kept on a store that can forget (Forgetter): reconciliation
	// deletes older ones. Their audit events stay.
	KeepEnded time.Duration

	// Refusals (deny, violation and rejected events) of one caller, of
	// one type and first reason, are written one by one up to
	// CoalesceAfter per CoalesceWindow; the rest of the window is counted
	// into one event (outcome coalesced) when it ends. Defaults: 10, 1 min.
	CoalesceAfter  int
	CoalesceWindow time.Duration
}

// Service turns a verified identity and a policy decision into a recorded
// lease, and revokes leases on request, on expiry and after crashes. It
// knows nothing of HTTP: callers pass identities already verified.
//
// Service itself issues (Issue, Explain), holds the policy and runs the
// background duties; the rest is in its parts, each a view of the same
// state: Leases (the lease lifecycle), Approvals, Agents (states and the
// freeze) and Audit (the event log and its followers).
type Service struct{ *core }

// Leases is the lease lifecycle: renew, release, revoke, the expiry sweep,
// the revocation queue and reconciliation after a crash.
func (s *Service) Leases() Leases { return Leases{s.core} }

// Approvals reviews, waits for and expires the approvals that high tiers
// need.
func (s *Service) Approvals() Approvals { return Approvals{s.core} }

// Agents pauses, quarantines and resumes agents, and starts and ends the
// global freeze.
func (s *Service) Agents() Agents { return Agents{s.core} }

// Audit reads and follows the audit log, and records the refusals the
// HTTP layer makes before the Service decides anything.
func (s *Service) Audit() Audit { return Audit{s.core} }

// The parts of a Service; see its accessors.
type (
	Leases    struct{ *core }
	Approvals struct{ *core }
	Agents    struct{ *core }
	Audit     struct{ *core }
)

// core is what every part shares: the store, the backends, the policy in
// force and the in-memory state every request reads.
type core struct {
	store    Store
	backends map[string]Backend
	policy   atomic.Pointer[templates.Policy]
	log      *slog.Logger
	metrics  Metrics
	now      func() time.Time
	cfg      Config

	// In-memory copies of what every request reads, kept in step with the
	// store by the Service, its only writer.
	mu     sync.RWMutex
	agents map[string]AgentState
	frozen bool

	inflight     inflight    // intents owned by requests of this process
	limits       buckets.Set // per agent and rate: the agents' rate: entries
	requestLocks keyedLocks  // per agent+"\x00"+request_id: retries of one request one at a time
	kick         chan struct{}
	replicaGone  chan struct{} // reconcile now: a replica's intents are orphans
	idMu         sync.Mutex
	entropy      *ulid.MonotonicEntropy

	coalesce        *coalescer      // repeated refusals of one caller
	approvalLocks   keyedLocks      // per approval ID: review, pickup and expiry one at a time
	approvalWaiters approvalWaiters // long polls of approvals still pending
	events          hub             // live subscribers of the audit events
	collected       collectedGroups // retired groups whose parent this process revoked
}

// NewService checks cfg and loads the agent states and freeze from the
// store. Call Run to reconcile and start the expiry sweeper and the
// revocation queue.
func NewService(ctx context.Context, cfg Config) (*Service, error) {
	if cfg.Store == nil || cfg.Policy == nil {
		return nil, errors.New("broker: NewService needs a Store and a Policy")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = nopMetrics{}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	setDefault(&cfg.MintTimeout, 30*time.Second)
	setDefault(&cfg.AuditTimeout, 5*time.Second)
	setDefault(&cfg.RetryBase, time.Second)
	setDefault(&cfg.RetryMax, 5*time.Minute)
	setDefault(&cfg.ApprovalTTL, time.Hour)
	setDefault(&cfg.PickupTTL, 15*time.Minute)
	setDefault(&cfg.ReconcileEvery, time.Minute)
	setDefault(&cfg.CoalesceWindow, time.Minute)
	if cfg.CoalesceAfter <= 0 {
		cfg.CoalesceAfter = 10
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 10
	}
	if cfg.RevokeConcurrency <= 0 {
		cfg.RevokeConcurrency = 8
	}
	s := &core{
		store:       cfg.Store,
		backends:    cfg.Backends,
		log:         cfg.Logger,
		metrics:     cfg.Metrics,
		now:         cfg.Now,
		cfg:         cfg,
		agents:      map[string]AgentState{},
		kick:        make(chan struct{}, 1),
		replicaGone: make(chan struct{}, 1),
		coalesce:    newCoalescer(cfg.CoalesceWindow, cfg.CoalesceAfter),
		entropy:     ulid.Monotonic(rand.Reader, 0),
	}
	s.policy.Store(cfg.Policy)
	if err := s.loadStates(ctx); err != nil {
		return nil, err
	}
	// The template versions that leases commit against (Conditions).
	if _, err := s.apply(ctx, Change{Templates: templateVersions(cfg.Policy)}); err != nil {
		return nil, fmt.Errorf("broker: record the templates: %w", err)
	}
	return &Service{s}, nil
}

func templateVersions(p *templates.Policy) map[string]string {
	out := map[string]string{}
	for _, t := range p.Templates() {
		out[t.Name] = t.Version
	}
	return out
}

func setDefault(d *time.Duration, v time.Duration) {
	if *d <= 0 {
		*d = v
	}
}

// Policy returns the policy in force.
func (s *Service) Policy() *templates.Policy { return s.policy.Load() }

// SetPolicy replaces the policy atomically (config reload); requests
// already being decided finish with the old one. The load is audited.
func (s *Service) SetPolicy(ctx context.Context, p *templates.Policy, actor string) error {
	// Backends are built at start; a reload cannot add one.
	for _, t := range p.Templates() {
		if _, ok := s.backends[t.Backend]; !ok {
			return Errorf(EINVALID, "template %s names backend %q, which latch was not started with: restart latch to add a backend", t.Name, t.Backend)
		}
	}
	s.policy.Store(p)
	details := map[string]string{}
	for _, t := range p.Templates() {
		details["template."+t.Name] = t.Version
	}
	old, err := s.store.Grants(ctx)
	if err != nil {
		return unavailable("the store", err)
	}
	_, err = s.apply(ctx, Change{Grants: grantsOf(p, old, s.now()), Templates: templateVersions(p),
		Events: []Event{{Type: EventConfigLoad, Actor: actor, Outcome: "loaded", Details: details}}})
	return err
}

func (s *core) newLeaseID() string {
	s.idMu.Lock()
	defer s.idMu.Unlock()
	return ulid.MustNew(ulid.Timestamp(s.now()), s.entropy).String()
}

// audit appends events on their own, within the audit deadline.
func (s *core) audit(ctx context.Context, events ...Event) error {
	_, err := s.apply(ctx, Change{Events: events})
	return err
}

// apply writes c within the audit deadline; a failure is an unavailable
// error: latch fails closed when it cannot record.
func (s *core) apply(ctx context.Context, c Change) ([]Event, error) {
	now := s.now()
	for i := range c.Events {
		if c.Events[i].Time.IsZero() {
			c.Events[i].Time = now
		}
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.AuditTimeout)
	defer cancel()
	// A store stuck in a write (a hung disk) must not hang the request
	// (invariant 5): past the deadline the outcome is unknown, which the
	// caller treats as a failure — no secret leaves, and a write that lands
	// later only records a lease whose credential was revoked.
	type result struct {
		events []Event
		err    error
	}
	done := make(chan result, 1)
	go func() {
		start := time.Now()
		events, err := s.store.Apply(ctx, c)
		s.metrics.StoreWrite(time.Since(start))
		done <- result{events, err}
	}()
	var events []Event
	var err error
	select {
	case r := <-done:
		events, err = r.events, r.err
	case <-ctx.Done():
		err = fmt.Errorf("store did not confirm the write within %s: %w", s.cfg.AuditTimeout, ErrStoreUnavailable)
	}
	var failed *ConditionFailed
	if errors.As(err, &failed) {
		return nil, failed // nothing written, and no failure of the store
	}
	if err != nil {
		if len(c.Events) > 0 {
			s.metrics.AuditAppendFailed()
		}
		return nil, unavailable("the audit log", err)
	}
	s.publish(events)
	return events, nil
}

func (s *core) agentState(id string) AgentState {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if st, ok := s.agents[id]; ok {
		return st
	}
	return AgentActive
}

func (s *core) isFrozen() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.frozen
}

// wake asks the revocation worker to look at the queue now.
func (s *core) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}
