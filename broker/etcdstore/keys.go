package etcdstore

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// keys names every key of a store under its prefix. Records are
// <kind>/<id>; an index is x/<name>/<field>␀<id> (IDs and fields never
// hold a NUL byte: broker.Change.Check), so "field␀" is a prefix of that
// field's entries and of no other field's; a time in a key is 16 hex
// digits that sort as the times do.
type keys struct{ p string } // the prefix, ending in "/"

func newKeys(prefix string) keys { return keys{p: strings.TrimSuffix(prefix, "/") + "/"} }

func (k keys) lease(id string) string        { return k.p + "l/" + id }
func (k keys) leases() string                { return k.p + "l/" }
func (k keys) intent(id string) string       { return k.p + "i/" + id }
func (k keys) intents() string               { return k.p + "i/" }
func (k keys) revocation(id string) string   { return k.p + "q/" + id }
func (k keys) revocations() string           { return k.p + "q/" }
func (k keys) agent(id string) string        { return k.p + "a/" + id }
func (k keys) agents() string                { return k.p + "a/" }
func (k keys) approval(id string) string     { return k.p + "p/" + id }
func (k keys) approvals() string             { return k.p + "p/" }
func (k keys) template(name string) string   { return k.p + "t/" + name }
func (k keys) templates() string             { return k.p + "t/" }
func (k keys) deleting(policy string) string { return k.p + "pd/" + policy }
func (k keys) deletings() string             { return k.p + "pd/" }
func (k keys) retired(group string) string   { return k.p + "gr/" + group }
func (k keys) retireds() string              { return k.p + "gr/" }
func (k keys) freeze() string                { return k.p + "freeze" }
func (k keys) grants() string                { return k.p + "grants" }

// index returns the key of id in index name under field, and idx the
// prefix of a field's entries (all of the index when field is empty and
// whole is set).
func (k keys) index(name, field, id string) string {
	return k.p + "x/" + name + "/" + field + "\x00" + id
}
func (k keys) indexOf(name, field string) string { return k.p + "x/" + name + "/" + field + "\x00" }
func (k keys) indexAll(name string) string       { return k.p + "x/" + name + "/" }

// timeIndex returns the key of id at t in a deadline index.
func (k keys) timeIndex(name string, t time.Time, id string) string {
	return k.p + "x/" + name + "/" + timeHex(t) + id
}

// Index names.
const (
	ixAgent     = "agent"     // agent␀id → state
	ixTask      = "task"      // task␀id → state
	ixState     = "state"     // state␀id
	ixExpiry    = "expiry"    // time id, active leases
	ixRequest   = "request"   // agent␀request ID → lease ID
	ixClaim     = "claim"     // agent␀request ID → the intent that serves it
	ixEnded     = "ended"     // end time, ID: ended leases, oldest first (ForgetEnded)
	ixLive      = "live"      // agent␀id → task␀policy␀group, live leases and intents
	ixDue       = "due"       // time id, queued revocations
	ixApStatus  = "apstatus"  // status␀id
	ixApAgent   = "apagent"   // agent␀id → status
	ixApRequest = "aprequest" // agent␀request ID → approval ID
	ixApDue     = "apdue"     // time id, open approvals' deadlines
)

// timeHex is t as 16 hex digits of its nanoseconds with the sign bit
// flipped, so that key order is time order, before 1970 too; times
// beyond int64 nanoseconds clamp to its ends.
func timeHex(t time.Time) string { return fmt.Sprintf("%016x", timeOrd(t)) }

func timeOrd(t time.Time) uint64 {
	var n int64
	switch {
	case t.Before(time.Unix(0, math.MinInt64)):
		n = math.MinInt64
	case t.After(time.Unix(0, math.MaxInt64)):
		n = math.MaxInt64
	default:
		n = t.UnixNano()
	}
	return uint64(n) ^ 1<<63
}

// splitID returns the ID after the field␀ of an index key.
func splitID(key string) string {
	i := strings.LastIndexByte(key, 0)
	return key[i+1:]
}
