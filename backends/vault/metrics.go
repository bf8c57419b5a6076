package vault

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/latchbroker/latch/broker"
)

// Metrics observes Vault calls. op is a fixed, low-cardinality name such as
// "token.create" or "pki.issue" (never a path); d is the whole call,
// retries and backoff included; err is its result.
type Metrics interface {
	ObserveVaultCall(op string, d time.Duration, err error)
}

type nopMetrics struct{}

func (nopMetrics) ObserveVaultCall(string, time.Duration, error) {}

// PrometheusMetrics is a Metrics that keeps a latency histogram of Vault
// calls by operation and outcome (ok, error, unavailable).
type PrometheusMetrics struct {
	calls *prometheus.HistogramVec
}

// NewPrometheusMetrics registers latch_vault_call_duration_seconds with reg
// — latch's own registry, not the global one. It panics if reg already
// holds the metric, like prometheus.MustRegister.
func NewPrometheusMetrics(reg prometheus.Registerer) *PrometheusMetrics {
	m := &PrometheusMetrics{
		calls: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "latch_vault_call_duration_seconds",
			Help: "Duration of Vault API calls made by latch, retries included, by operation and outcome.",
			// 1 ms to ~16 s: a local Vault answers in a few ms, a PKI
			// issue with RSA keys can take seconds, timeouts sit at 10 s.
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}, []string{"op", "outcome"}),
	}
	reg.MustRegister(m.calls)
	return m
}

// ObserveVaultCall implements Metrics.
func (m *PrometheusMetrics) ObserveVaultCall(op string, d time.Duration, err error) {
	m.calls.WithLabelValues(op, Outcome(err)).Observe(d.Seconds())
}

// Outcome names a call's result for metrics: "ok", "unavailable" (a
// retryable failure) or "error".
func Outcome(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, broker.ErrBackendUnavailable):
		return "unavailable"
	default:
		return "error"
	}
}
