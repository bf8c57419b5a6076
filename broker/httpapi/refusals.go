package httpapi

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/internal/buckets"
)

// refusalBudget is how many refused requests a caller may make: each
// refusal (any 4xx but the 429s this budget sends) spends one token of
// the caller's bucket, and a caller whose bucket is empty gets 429
// too_many_refusals at once, before its request is evaluated or audited.
// So a flood of bad requests from one caller costs a map lookup each, not
// a durable commit and a webhook delivery. Callers are keyed by SPIFFE ID
// when identified, else by connection.
type refusalBudget struct {
	set   buckets.Set
	limit rate.Limit
	burst int
}

// maxRefusalCallers bounds the callers tracked (see buckets.Set.Max).
const maxRefusalCallers = 10000

func newRefusalBudget(perMinute int) *refusalBudget {
	return &refusalBudget{set: buckets.Set{Max: maxRefusalCallers}, limit: rate.Limit(float64(perMinute) / 60), burst: perMinute}
}

// callerKey names c's caller for the budget.
func callerKey(c *call) string {
	if c.who.id != "" {
		return c.who.id
	}
	return "conn " + c.r.RemoteAddr
}

// exhausted returns the error for a caller with no refusals left, or nil.
// A caller never refused has no bucket: serving it costs a lookup.
func (b *refusalBudget) exhausted(key string, now time.Time) error {
	lim := b.set.Peek(key)
	if lim == nil || lim.TokensAt(now) >= 1 {
		return nil
	}
	r := lim.ReserveN(now, 1)
	wait := r.DelayFrom(now)
	r.CancelAt(now)
	return &broker.Error{Code: broker.ELIMIT, Message: "too many refused requests: fix the requests before retrying",
		Reasons: []string{reasonTooManyRefusals}, RetryAfter: max(wait, time.Second)}
}

// spend charges one refusal to key.
func (b *refusalBudget) spend(key string, now time.Time) {
	b.set.Get(key, b.limit, b.burst, now).AllowN(now, 1)
}

const reasonTooManyRefusals = "too_many_refusals"

// overBudget says whether err is the refusal budget's 429.
func overBudget(err error) bool {
	var e *broker.Error
	return errors.As(err, &e) && slices.Equal(e.Reasons, []string{reasonTooManyRefusals})
}

// everySecond counts events and lets one of them through a second,
// carrying the count since the last one through: a flood logs a line a
// second, not one per request.
type everySecond struct {
	n    atomic.Int64
	last atomic.Int64 // unix nanos of the last one through
}

// add counts one event at now and returns how many the caller should
// report: 0 while the second since the last report runs.
func (e *everySecond) add(now time.Time) int64 {
	n := e.n.Add(1)
	last, t := e.last.Load(), now.UnixNano()
	if t-last < int64(time.Second) || !e.last.CompareAndSwap(last, t) {
		return 0
	}
	e.n.Add(-n)
	return n
}

// refused says whether a finished request was refused for the caller's
// fault, and with which reason: the label of latch_refused_total, a code
// from a fixed set (a window's name is cut off).
func refused(status int, reasons []string) (string, bool) {
	if status < 400 || status >= 500 {
		return "", false
	}
	if len(reasons) == 0 {
		return "status_" + strconv.Itoa(status), true
	}
	reason, _, _ := strings.Cut(reasons[0], ":")
	return reason, true
}
