package promstats

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/latchbroker/latch/broker"
)

// Metrics is latch's Prometheus instrumentation on a registry of its own.
// It implements broker.Metrics, broker.EventDropCounter, httpapi.Metrics,
// notify.Metrics and, by ObserveVaultCall's plain arguments, the Metrics
// of backends/vault without importing it (promstats knows no backend;
// cmd/latch, which wires both, checks the fit at compile time). It is safe
// for concurrent use.
type Metrics struct {
	reg *prometheus.Registry

	requests      *prometheus.CounterVec
	issueDuration prometheus.Histogram
	activeLeases  *prometheus.GaugeVec
	revocations   *prometheus.CounterVec
	queueDepth    prometheus.Gauge
	violations    *prometheus.CounterVec
	refused       *prometheus.CounterVec
	vault         *prometheus.HistogramVec
	auditFailures prometheus.Counter
	storeWrites   prometheus.Histogram
	eventsDropped prometheus.Counter
	httpRequests  *prometheus.CounterVec
	httpDuration  *prometheus.HistogramVec
	webhooks      *prometheus.CounterVec
	outbox        prometheus.Gauge
	approvals     prometheus.Gauge
	tokenEnd      prometheus.Gauge

	labels labelGuard

	mu     sync.Mutex
	active map[string]bool // templates with an active-lease gauge
}

var _ broker.Metrics = (*Metrics)(nil)
var _ broker.EventDropCounter = (*Metrics)(nil)

// New returns Metrics registered on a new registry, with the Go runtime
// and process collectors beside latch's own.
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), active: map[string]bool{}}
	m.reg.MustRegister(m.requestMetrics()...)
	m.reg.MustRegister(m.vaultMetrics()...)
	m.reg.MustRegister(m.queueMetrics()...)
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.outcomesAtZero()
	return m
}

// requestMetrics makes the metrics of the agents' requests and the HTTP API.
func (m *Metrics) requestMetrics() []prometheus.Collector {
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "latch_requests_total",
		Help: "Credential requests by outcome (issued, denied, limited, failed) and reason code (empty when none).",
	}, []string{"outcome", "reason"})
	m.issueDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "latch_issue_duration_seconds",
		Help: "Time to issue a credential, from request to committed lease, for issued requests.",
		// 1 ms to ~8 s: a local Vault mints in milliseconds, a PKI
		// issue with RSA keys in seconds.
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
	})
	m.violations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "latch_violations_total",
		Help: "Refusals that point at misuse, by reason (unknown_agent, task_not_granted, expired, wrong_audience, missing_role, ...).",
	}, []string{"reason"})
	m.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "latch_refused_total",
		Help: "API requests refused for the caller's fault (4xx), by first reason (param_constraint, no_credential, too_many_refusals, ...).",
	}, []string{"reason"})
	m.httpRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "latch_http_requests_total",
		Help: "HTTP API requests by route and status code.",
	}, []string{"route", "code"})
	m.httpDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "latch_http_request_duration_seconds",
		Help:    "HTTP API request duration by route (event streams count their whole life).",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
	}, []string{"route"})
	return []prometheus.Collector{m.requests, m.issueDuration, m.violations, m.refused, m.httpRequests, m.httpDuration}
}

// vaultMetrics makes the metrics of leases, revocations and latch's calls to Vault and the audit log.
func (m *Metrics) vaultMetrics() []prometheus.Collector {
	m.activeLeases = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "latch_active_leases",
		Help: "Active leases by template, counted from the store periodically (see TrackCounts).",
	}, []string{"template"})
	m.revocations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "latch_revocations_total",
		Help: "Revocation attempts by result (ok, retry, irrevocable, expires: nothing to revoke, a never-delivered credential left to expire at its TTL).",
	}, []string{"result"})
	m.queueDepth = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "latch_revocation_queue_depth",
		Help: "Revocations queued and not yet confirmed by the backend.",
	})
	m.vault = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "latch_vault_request_duration_seconds",
		Help:    "Duration of Vault API calls by operation and outcome (ok, unavailable, error), retries included.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
	}, []string{"op", "outcome"})
	m.auditFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "latch_audit_append_failures_total",
		Help: "Audit events that could not be written (the request they belong to failed closed).",
	})
	m.storeWrites = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "latch_store_write_duration_seconds",
		Help:    "Duration of durable writes to the lease store, the wait for a group commit included (an issue makes two: its intent, then its lease).",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
	})
	m.eventsDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "latch_events_dropped_total",
		Help: "Audit events dropped from the live feed of a slow subscriber (the event stream refills the gap from the audit log).",
	})
	m.tokenEnd = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "latch_vault_token_end_timestamp_seconds",
		Help: "When latch's own Vault token, read from vault.auth.token_file, ends for good (Unix time): renewals cannot take it further, so a new token must be in the file before then. 0 when there is no such end: a periodic token, or AppRole and JWT auth, with which latch logs in again by itself.",
	})
	return []prometheus.Collector{m.activeLeases, m.revocations, m.queueDepth, m.vault, m.auditFailures, m.storeWrites, m.eventsDropped, m.tokenEnd}
}

// queueMetrics makes the metrics of the webhook outbox and the approvals waiting.
func (m *Metrics) queueMetrics() []prometheus.Collector {
	m.webhooks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "latch_webhook_deliveries_total",
		Help: "Webhook delivery attempts by result (delivered, failed and to be retried, dead after the last attempt, dropped for a removed webhook).",
	}, []string{"result"})
	m.outbox = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "latch_webhook_outbox_depth",
		Help: "Webhook deliveries waiting in the outbox (a receiver that is down makes it grow).",
	})
	m.approvals = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "latch_approvals_pending",
		Help: "Requests waiting for their reviews, counted from the store periodically (see TrackCounts).",
	})
	return []prometheus.Collector{m.webhooks, m.outbox, m.approvals}
}

// outcomesAtZero makes the outcome series alerts are written on exist
// from the start, at zero: a rule on irrevocable revocations or dead
// webhooks can be tested before the first one happens.
func (m *Metrics) outcomesAtZero() {
	for _, r := range []string{"ok", "retry", "irrevocable", "expires"} {
		m.revocations.WithLabelValues(r)
	}
	for _, r := range []string{"delivered", "failed", "dead", "dropped"} {
		m.webhooks.WithLabelValues(r)
	}
	for _, o := range []string{"issued", "pending", "denied", "limited", "failed"} {
		m.requests.WithLabelValues(o, "")
	}
}

// Registry is the registry the metrics live on, for callers that add
// their own collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus exposition format: mount
// it at /metrics on the metrics listener, not on the API's.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg, ErrorHandling: promhttp.ContinueOnError})
}

// RequestDone implements broker.Metrics. Only issued requests are timed:
// denials take microseconds and would hide the latency that matters.
func (m *Metrics) RequestDone(outcome, reason string, d time.Duration) {
	m.requests.WithLabelValues(m.labels.value("outcome", outcome), m.labels.value("reason", reason)).Inc()
	if outcome == "issued" {
		m.issueDuration.Observe(d.Seconds())
	}
}

// Violation implements broker.Metrics and httpapi.Metrics.
func (m *Metrics) Violation(reason string) {
	m.violations.WithLabelValues(m.labels.value("violation", reason)).Inc()
}

// Refused implements httpapi.Metrics.
func (m *Metrics) Refused(reason string) {
	m.refused.WithLabelValues(m.labels.value("refused", reason)).Inc()
}

// WebhookDelivery implements notify.Metrics.
func (m *Metrics) WebhookDelivery(result string) {
	m.webhooks.WithLabelValues(m.labels.value("webhook_result", result)).Inc()
}

// WebhookOutbox implements notify.Metrics.
func (m *Metrics) WebhookOutbox(depth int) { m.outbox.Set(float64(depth)) }

// RevocationDone implements broker.Metrics.
func (m *Metrics) RevocationDone(result string) {
	m.revocations.WithLabelValues(m.labels.value("result", result)).Inc()
}

// QueueDepth implements broker.Metrics.
func (m *Metrics) QueueDepth(n int) { m.queueDepth.Set(float64(n)) }

// AuditAppendFailed implements broker.Metrics.
func (m *Metrics) AuditAppendFailed() { m.auditFailures.Inc() }

// StoreWrite implements broker.Metrics.
func (m *Metrics) StoreWrite(d time.Duration) { m.storeWrites.Observe(d.Seconds()) }

// EventDropped implements broker.EventDropCounter.
func (m *Metrics) EventDropped() { m.eventsDropped.Inc() }

// ObserveVaultCall records one Vault call: op is the operation's name,
// outcome ok, unavailable or error, d the whole call with its retries.
// It is backends/vault's Metrics.
func (m *Metrics) ObserveVaultCall(op, outcome string, d time.Duration) {
	m.vault.WithLabelValues(m.labels.value("op", op), m.labels.value("outcome", outcome)).Observe(d.Seconds())
}

// VaultTokenEnd sets latch_vault_token_end_timestamp_seconds; it is
// backends/vault's Metrics.
func (m *Metrics) VaultTokenEnd(at time.Time) {
	if at.IsZero() {
		m.tokenEnd.Set(0)
		return
	}
	m.tokenEnd.Set(float64(at.Unix()))
}

// HTTPRequest implements httpapi.Metrics.
func (m *Metrics) HTTPRequest(route string, status int, d time.Duration) {
	route = m.labels.value("route", route)
	m.httpRequests.WithLabelValues(route, strconv.Itoa(status)).Inc()
	m.httpDuration.WithLabelValues(route).Observe(d.Seconds())
}

// SetActiveLeases sets latch_active_leases to counts (template → active
// leases); templates missing from counts are removed.
func (m *Metrics) SetActiveLeases(counts map[string]int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := map[string]float64{}
	for t, n := range counts {
		now[m.labels.value("template", t)] += float64(n)
	}
	for t, n := range now {
		m.activeLeases.WithLabelValues(t).Set(n)
		m.active[t] = true
	}
	for t := range m.active {
		if _, ok := now[t]; !ok {
			m.activeLeases.DeleteLabelValues(t)
			delete(m.active, t)
		}
	}
}

// Counter is what TrackCounts counts from; every broker.Store implements it.
type Counter interface {
	CountByTask(ctx context.Context, state broker.LeaseState) (map[string]int, error)
	CountApprovals(ctx context.Context, status broker.ApprovalStatus) (int, error)
}

// CountActiveLeases counts the active leases of src by template.
func CountActiveLeases(ctx context.Context, src Counter) (map[string]int, error) {
	return src.CountByTask(ctx, broker.StateActive)
}

// TrackCounts keeps latch_active_leases and latch_approvals_pending up to
// date: it counts them in src now and then every interval (default 15 s)
// until ctx ends. Counting from the store, rather than adding and
// subtracting on events, cannot drift: a lost event, a crash or a restart
// corrects itself at the next count. A failed count keeps the last values.
func (m *Metrics) TrackCounts(ctx context.Context, src Counter, every time.Duration) {
	if every <= 0 {
		every = 15 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if counts, err := CountActiveLeases(ctx, src); err == nil {
			m.SetActiveLeases(counts)
		}
		if n, err := src.CountApprovals(ctx, broker.ApprovalPending); err == nil {
			m.approvals.Set(float64(n))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// labelGuard keeps label values valid and their number bounded: a label
// takes at most maxLabelValues distinct values, past which new ones are
// counted as "other", so that no caller can grow the registry without
// bound.
type labelGuard struct {
	mu   sync.Mutex
	seen map[string]map[string]bool
}

const (
	maxLabelValues = 200
	maxLabelLen    = 128
)

func (g *labelGuard) value(label, v string) string {
	v = strings.ToValidUTF8(v, "?")
	if len(v) > maxLabelLen {
		v = strings.ToValidUTF8(v[:maxLabelLen], "")
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.seen == nil {
		g.seen = map[string]map[string]bool{}
	}
	s := g.seen[label]
	if s == nil {
		s = map[string]bool{}
		g.seen[label] = s
	}
	if s[v] {
		return v
	}
	if len(s) >= maxLabelValues {
		return "other"
	}
	s[v] = true
	return v
}
