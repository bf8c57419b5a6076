package vault

import (
	"errors"
	"time"

	"github.com/latchbroker/latch/broker"
)

// Metrics observes Vault calls. op is a fixed, low-cardinality name such
// as "token.create" or "pki.issue" (never a path); outcome is
// Outcome of the call's error; d is the whole call, retries and backoff
// included. The arguments are plain values so that an implementation
// (broker/promstats, for the server) needs to import nothing of this
// package: it satisfies Metrics by its method set alone.
type Metrics interface {
	ObserveVaultCall(op, outcome string, d time.Duration)
}

type nopMetrics struct{}

func (nopMetrics) ObserveVaultCall(string, string, time.Duration) {}

// Outcome names a call's result: "ok", "unavailable" (a retryable
// failure) or "error".
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
