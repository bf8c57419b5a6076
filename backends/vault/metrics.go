package vault

import (
	"errors"
	"time"

	"github.com/latchbroker/latch/broker"
)

// Metrics observes Vault calls; broker/promstats implements it for the
// server. op is a fixed, low-cardinality name such as
// "token.create" or "pki.issue" (never a path); d is the whole call,
// retries and backoff included; err is its result.
type Metrics interface {
	ObserveVaultCall(op string, d time.Duration, err error)
}

type nopMetrics struct{}

func (nopMetrics) ObserveVaultCall(string, time.Duration, error) {}

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
