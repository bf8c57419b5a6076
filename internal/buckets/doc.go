// Package buckets keeps one token bucket per key, in bounded memory: the
// per-agent request rates of the broker and the per-caller refusal budget
// of the HTTP API.
//
// A bucket that has filled up again is what a new one would be, so
// dropping it changes no decision: whenever the set has doubled since the
// last prune, full buckets are dropped, and memory stays bounded by the
// keys seen within one refill period. When a prune leaves Max keys or
// more, the fullest bucket makes room for the new one, so that the
// callers being limited stay limited.
//
//	var b buckets.Set
//	if !b.Get("spiffe://example.org/agent/x", rate.Every(time.Second), 10, now).AllowN(now, 1) {
//		// refuse
//	}
package buckets
