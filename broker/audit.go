package broker

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
)

// EventType names what an audit event records.
type EventType string

const (
	EventRequest     EventType = "request"     // a credential request arrived (and was decided)
	EventIssue       EventType = "issue"       // a lease was committed and its secret returned
	EventAlert       EventType = "alert"       // a lease was issued under a tier that alerts (medium by default)
	EventDeny        EventType = "deny"        // a request was denied by policy
	EventViolation   EventType = "violation"   // a denial that points at misuse (unknown agent, task not granted...)
	EventRejected    EventType = "rejected"    // a request was malformed
	EventFail        EventType = "fail"        // the backend or the store failed a request
	EventRelease     EventType = "release"     // the agent released its lease
	EventRenew       EventType = "renew"       // a lease was renewed
	EventRevoke      EventType = "revoke"      // a revocation was requested (queued)
	EventRevoked     EventType = "revoked"     // the backend confirmed a revocation
	EventExpire      EventType = "expire"      // a lease reached its TTL and was revoked
	EventIrrevocable EventType = "irrevocable" // a revocation exhausted its retries
	EventPause       EventType = "pause"
	EventQuarantine  EventType = "quarantine"
	EventResume      EventType = "resume"
	EventFreeze      EventType = "freeze"
	EventUnfreeze    EventType = "unfreeze"
	EventReconcile   EventType = "reconcile" // restart reconciliation completed or revoked an intent
	EventConfigLoad  EventType = "config_load"
	EventCheckpoint  EventType = "checkpoint" // a signed checkpoint of the chain: details seq, hash, jws
	EventToolCall    EventType = "tool_call"  // an agent's MCP server reports a tool call of its model: details client, tool, trace_id

	EventApprovalRequested EventType = "approval_requested" // a request needs approval: a pending approval was created
	EventApprovalReview    EventType = "approval_review"    // an approver approved, and more approvals are needed
	EventApprovalApproved  EventType = "approval_approved"  // the last approval needed: the agent may pick up
	EventApprovalDenied    EventType = "approval_denied"    // an approver denied
	EventApprovalExpired   EventType = "approval_expired"   // pending past its deadline, or approved and never picked up
)

// EventTypes are all the event types, in the order above: what filters
// on the audit log and the live stream accept.
var EventTypes = []EventType{
	EventRequest, EventIssue, EventAlert, EventDeny, EventViolation, EventRejected, EventFail,
	EventRelease, EventRenew, EventRevoke, EventRevoked, EventExpire, EventIrrevocable,
	EventPause, EventQuarantine, EventResume, EventFreeze, EventUnfreeze, EventReconcile, EventConfigLoad, EventCheckpoint, EventToolCall,
	EventApprovalRequested, EventApprovalReview, EventApprovalApproved, EventApprovalDenied, EventApprovalExpired,
}

// Event is one audit record. Events form a SHA-256 hash chain: each holds
// the previous event's hash, and its own hash covers its canonical encoding
// and that link, so any edit, deletion, reordering or truncation shows.
// Events never hold a secret.
type Event struct {
	Seq      uint64            `json:"seq"`
	Time     time.Time         `json:"time"`
	Type     EventType         `json:"type"`
	Actor    string            `json:"actor,omitempty"`   // who acted: agent or operator SPIFFE ID, "admin-socket", "latch"
	Subject  string            `json:"subject,omitempty"` // whom it concerns, when not the actor (an agent)
	Task     string            `json:"task,omitempty"`
	Lease    string            `json:"lease,omitempty"`
	Outcome  string            `json:"outcome,omitempty"`
	Reasons  []string          `json:"reasons,omitempty"`
	Details  map[string]string `json:"details,omitempty"`
	PrevHash string            `json:"prev_hash"`
	Hash     string            `json:"hash"`
}

// ComputeHash returns the hex SHA-256 of the event's canonical encoding:
// its JSON form (fields in declaration order, map keys sorted, times in UTC)
// without the Hash field. PrevHash is included, which links the chain.
func (e Event) ComputeHash() string {
	e.Hash = ""
	e.Time = e.Time.UTC()
	b, err := json.Marshal(e)
	if err != nil {
		// Only a time outside the years 0-9999 fails to encode. Latch never
		// writes one; a record that holds one was forged or corrupted, and
		// an empty hash matches no record, so it fails verification.
		return ""
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Chain links e after prev (nil for the first event): it sets Seq,
// PrevHash and Hash.
func (e *Event) Chain(prev *Event) {
	e.Time = e.Time.UTC()
	if prev == nil {
		e.Seq, e.PrevHash = 1, ""
	} else {
		e.Seq, e.PrevHash = prev.Seq+1, prev.Hash
	}
	e.Hash = e.ComputeHash()
}

// ChainVerifier checks a sequence of events, one at a time, in order.
// The zero value expects the chain to start at sequence 1.
type ChainVerifier struct {
	prev  *Event
	count uint64
}

// Next checks e against the events seen before. The error names the
// sequence number and what is wrong with it.
func (v *ChainVerifier) Next(e Event) error {
	wantSeq := uint64(1)
	wantPrev := ""
	if v.prev != nil {
		wantSeq, wantPrev = v.prev.Seq+1, v.prev.Hash
	}
	switch {
	case e.Seq != wantSeq:
		return fmt.Errorf("record %d: sequence number is %d, want %d (a record was deleted, inserted or reordered)", wantSeq, e.Seq, wantSeq)
	case e.PrevHash != wantPrev:
		return fmt.Errorf("record %d: previous hash does not match record %d (a record was deleted, inserted or reordered)", e.Seq, e.Seq-1)
	case e.ComputeHash() != e.Hash:
		return fmt.Errorf("record %d: hash does not match its content (the record was edited)", e.Seq)
	}
	ev := e
	v.prev = &ev
	v.count++
	return nil
}

// StartAfter makes v expect the chain to go on after record seq, whose
// hash is hash: the anchor of a pruned log, or where a segment of an
// export starts.
func (v *ChainVerifier) StartAfter(seq uint64, hash string) { v.prev = &Event{Seq: seq, Hash: hash} }

// NextSeq is the sequence number the next event must have.
func (v *ChainVerifier) NextSeq() uint64 {
	if v.prev == nil {
		return 1
	}
	return v.prev.Seq + 1
}

// Count is the number of events verified.
func (v *ChainVerifier) Count() uint64 { return v.count }

// Last is the last verified event (the anchor of StartAfter before any),
// nil when none.
func (v *ChainVerifier) Last() *Event { return v.prev }
