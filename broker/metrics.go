package broker

import "time"

// Metrics receives what the Service measures. cmd/latch implements it on a
// Prometheus registry of its own; tests may count calls. Methods must be
// cheap and safe for concurrent use.
type Metrics interface {
	// RequestDone counts a credential request by outcome (issued, denied,
	// pending, failed) and reason code ("" when none).
	RequestDone(outcome, reason string, d time.Duration)
	// Violation counts a denial that points at misuse, by reason code.
	Violation(reason string)
	// RevocationDone counts a revocation attempt by result (ok, retry, expires,
	// irrevocable).
	RevocationDone(result string)
	// QueueDepth reports the revocation queue's length.
	QueueDepth(n int)
	// AuditAppendFailed counts an audit event that could not be written.
	AuditAppendFailed()
	// StoreWrite times one durable write (Store.Apply), its wait for a
	// group commit included: an issue makes two.
	StoreWrite(d time.Duration)
}

type nopMetrics struct{}

func (nopMetrics) RequestDone(string, string, time.Duration) {}
func (nopMetrics) Violation(string)                          {}
func (nopMetrics) RevocationDone(string)                     {}
func (nopMetrics) QueueDepth(int)                            {}
func (nopMetrics) AuditAppendFailed()                        {}
func (nopMetrics) StoreWrite(time.Duration)                  {}
