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
	// VaultTokenEnd is when latch's own token ends for good, read from
	// a token file: renewals cannot take it past this time, and latch
	// cannot log in again by itself. Zero when there is no such end (a
	// periodic token, or a method latch logs in with again).
	VaultTokenEnd(at time.Time)
}

type nopMetrics struct{}

func (nopMetrics) ObserveVaultCall(string, string, time.Duration) {}
func (nopMetrics) VaultTokenEnd(time.Time)                        {}

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
