package boltstore

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/latchbroker/latch/broker"
)

// Apply makes c durable in one transaction, grouped with concurrent Applys
// into a shared commit, and returns c.Events chained after the audit head.
//
// Within a change, deletions run before puts (DeleteIntents before
// PutIntents, Dequeue before Enqueue); lease puts maintain every index.
// Apply refuses, with ErrInvalidChange and nothing written: a lease or
// intent without ID, agent or task; an ID containing a NUL byte or longer
// than 4096 bytes; an unknown lease or agent state; an active lease
// without ExpiresAt (the sweeper would never end it); a revocation or agent
// without ID; an event without type or with a time outside the years 1 to
// 9999 (its hash could not be computed). Events without a time get
// Options.Now.
//
// Errors: ctx.Err() when ctx ends before the change entered a transaction
// (nothing was written; once its transaction is committing, Apply waits for
// the outcome, so an error always means nothing was written);
// ErrInvalidChange; broker.ErrStoreUnavailable wrapping bbolt's error when
// the file cannot be written (full disk, read-only, closed), also wrapping
// ErrCorrupt when a record it must read cannot be decoded or the audit
// head does not match the log.
func (s *Store) Apply(ctx context.Context, c broker.Change) ([]broker.Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if s.c == nil { // read-only
		return nil, fmt.Errorf("boltstore: apply: %w: %s is open read-only", broker.ErrStoreUnavailable, s.path)
	}
	w, err := s.prepare(c)
	if err != nil {
		return nil, fmt.Errorf("boltstore: apply: %w", err)
	}
	if w.empty() {
		return []broker.Event{}, nil
	}

	var (
		out    []broker.Event
		failed *broker.ConditionFailed
		gate   gate
	)
	fn := func(tx *bolt.Tx) error {
		if !gate.enter() {
			return nil // the caller gave up before this ran: write nothing
		}
		// fn runs again when a neighbour in its batch failed: start afresh.
		out = append(out[:0], w.events...)
		var err error
		// A failed condition writes nothing but is no transaction error:
		// the rest of the group commits.
		if failed, err = checkConditions(tx, w.conditions); err != nil || failed != nil {
			return err
		}
		if failed = checkUnused(tx, w.markDeleting); failed != nil {
			return nil
		}
		return w.write(tx, out)
	}
	done := s.submit(fn)
	select {
	case err = <-done:
	case <-ctx.Done():
		if gate.abandon() {
			return nil, ctx.Err()
		}
		// fn ran: its transaction may commit. Report what happened.
		err = <-done
	}
	if err != nil {
		return nil, classify("apply", err)
	}
	if failed != nil {
		return nil, failed
	}
	return out, nil
}

// gate lets Apply give up on a change still waiting for its transaction
// without racing the committer that is about to run it: either the change
// is withdrawn and never written, or it has entered a transaction and
// Apply waits for the outcome.
type gate struct {
	mu      sync.Mutex
	entered bool
	gone    bool
}

// enter reports whether fn may write; after it returns true, abandon fails.
func (g *gate) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.gone {
		return false
	}
	g.entered = true
	return true
}

// abandon reports whether the change was withdrawn before any run.
func (g *gate) abandon() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.entered {
		return false
	}
	g.gone = true
	return true
}

// write is a validated, encoded change: what the transaction does, with
// everything that does not depend on the stored state done beforehand so
// the write lock is held as briefly as possible.
type write struct {
	conditions    *broker.Conditions
	deleteIntents []string
	putIntents    []intentWrite
	leases        []leaseWrite
	dequeue       []string
	enqueue       []revWrite
	agents        broker.Change // its AgentStates and Uses only
	freeze        []byte
	approvals     []approvalWrite
	grants        []byte
	templates     []kv // nil: keep; empty: none recorded
	events        []broker.Event
	markDeleting  []string // shared policies (see policies.go)
	doneDeleting  []string
	retireGroups  []broker.RetiredGroup // see groups.go
	forgetGroups  []string
	now           time.Time
}

type kv struct{ k, v []byte }

type intentWrite struct {
	id, agent, task, policy, group string
	val                            []byte
}

type leaseWrite struct {
	id  string
	val []byte
	ix  leaseIndex
}

type revWrite struct {
	id   string
	val  []byte
	next time.Time
}

// leaseIndex is the part of a lease the indexes are built from; the old
// version of a lease is decoded into it to find its index entries.
type leaseIndex struct {
	Agent     string            `json:"agent"`
	Task      string            `json:"task"`
	RequestID string            `json:"request_id"`
	ExpiresAt time.Time         `json:"expires_at"`
	State     broker.LeaseState `json:"state"`
	Refs      struct {
		Policy string `json:"policy"`
		Group  string `json:"group"`
	} `json:"refs"`
}

func (w *write) empty() bool {
	return len(w.deleteIntents) == 0 && len(w.putIntents) == 0 && len(w.leases) == 0 &&
		len(w.dequeue) == 0 && len(w.enqueue) == 0 && len(w.agents.AgentStates) == 0 && len(w.agents.Uses) == 0 &&
		w.freeze == nil && len(w.approvals) == 0 && w.grants == nil && w.templates == nil && len(w.events) == 0 &&
		len(w.markDeleting) == 0 && len(w.doneDeleting) == 0 && len(w.retireGroups) == 0 && len(w.forgetGroups) == 0
}

// prepare validates c (broker.Change.Check) and encodes what does not
// depend on stored state.
func (s *Store) prepare(c broker.Change) (*write, error) {
	if err := c.Check(); err != nil {
		return nil, err
	}
	w := &write{conditions: c.Conditions, now: s.now()}
	for _, step := range []func(*write, broker.Change) error{prepareIntents, prepareLeases, prepareQueue, prepareAgents, prepareRecords, preparePolicies, prepareGroups} {
		if err := step(w, c); err != nil {
			return nil, err
		}
	}
	approvals, err := prepareApprovals(c.PutApprovals)
	if err != nil {
		return nil, err
	}
	w.approvals = approvals
	return w, s.prepareEvents(w, c.Events)
}

func prepareIntents(w *write, c broker.Change) error {
	w.deleteIntents = c.DeleteIntents
	for _, l := range c.PutIntents {
		v, err := json.Marshal(l)
		if err != nil {
			return fmt.Errorf("%w: encode intent %s: %v", ErrInvalidChange, l.ID, err)
		}
		w.putIntents = append(w.putIntents, intentWrite{id: l.ID, agent: l.Agent, task: l.Task, policy: l.Refs.Policy, group: l.Refs.Group, val: v})
	}
	return nil
}

func prepareLeases(w *write, c broker.Change) error {
	for _, l := range c.PutLeases {
		v, err := json.Marshal(l)
		if err != nil {
			return fmt.Errorf("%w: encode lease %s: %v", ErrInvalidChange, l.ID, err)
		}
		ix := leaseIndex{Agent: l.Agent, Task: l.Task, RequestID: l.RequestID, ExpiresAt: l.ExpiresAt, State: l.State}
		ix.Refs.Policy, ix.Refs.Group = l.Refs.Policy, l.Refs.Group
		w.leases = append(w.leases, leaseWrite{id: l.ID, val: v, ix: ix})
	}
	return nil
}

func prepareQueue(w *write, c broker.Change) error {
	w.dequeue = c.Dequeue
	for _, r := range c.Enqueue {
		v, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("%w: encode revocation %s: %v", ErrInvalidChange, r.LeaseID, err)
		}
		w.enqueue = append(w.enqueue, revWrite{id: r.LeaseID, val: v, next: r.NextAttempt})
	}
	return nil
}

func prepareAgents(w *write, c broker.Change) error {
	w.agents = broker.Change{AgentStates: c.AgentStates, Uses: c.Uses}
	return nil
}

// prepareRecords encodes the single records: freeze, grants, templates.
func prepareRecords(w *write, c broker.Change) error {
	if c.Freeze != nil {
		v, err := json.Marshal(c.Freeze)
		if err != nil {
			return fmt.Errorf("%w: encode freeze: %v", ErrInvalidChange, err)
		}
		w.freeze = v
	}
	if c.Grants != nil {
		v, err := json.Marshal(c.Grants)
		if err != nil {
			return fmt.Errorf("%w: encode grants: %v", ErrInvalidChange, err)
		}
		w.grants = v
	}
	if c.Templates != nil {
		w.templates = []kv{}
		for name, version := range c.Templates {
			w.templates = append(w.templates, kv{[]byte(name), []byte(version)})
		}
	}
	return nil
}

// prepareEvents stamps events without a time.
func (s *Store) prepareEvents(w *write, events []broker.Event) error {
	if len(events) == 0 {
		return nil
	}
	now := s.now()
	w.events = make([]broker.Event, len(events))
	for i, e := range events {
		if e.Time.IsZero() {
			e.Time = now
		}
		w.events[i] = e
	}
	return nil
}

// write applies w in tx, chaining events (a copy of w.events) in place.
// It depends on nothing but tx and w, so it may run more than once.
func (w *write) write(tx *bolt.Tx, events []broker.Event) error {
	if err := w.writeIntents(tx); err != nil {
		return err
	}
	if err := w.writePolicyMarks(tx); err != nil {
		return err
	}
	if err := w.writeGroupMarks(tx); err != nil {
		return err
	}
	if len(w.leases) > 0 {
		ix := openLeaseBuckets(tx)
		for i := range w.leases {
			if err := ix.put(&w.leases[i]); err != nil {
				return err
			}
		}
	}
	if err := w.writeQueue(tx); err != nil {
		return err
	}
	if err := w.writeAgents(tx); err != nil {
		return err
	}
	if w.freeze != nil {
		if err := tx.Bucket(bktFreeze).Put(keyFreeze, w.freeze); err != nil {
			return err
		}
	}
	if err := writeApprovals(tx, w.approvals); err != nil {
		return err
	}
	if w.grants != nil {
		if err := tx.Bucket(bktMeta).Put(keyGrants, w.grants); err != nil {
			return err
		}
	}
	if err := w.writeTemplates(tx); err != nil {
		return err
	}
	if len(events) > 0 {
		return appendEvents(tx, events)
	}
	return nil
}

// writeIntents deletes, then puts intents, keeping the in-flight index.
func (w *write) writeIntents(tx *bolt.Tx) error {
	intents := tx.Bucket(bktIntents)
	for _, id := range w.deleteIntents {
		old := intents.Get([]byte(id))
		if old == nil {
			continue
		}
		// When the change puts the intent's lease, its agent is the
		// intent's: no need to decode the intent to find its key.
		agent, ok := w.leaseAgent(id)
		if !ok {
			var ix leaseIndex
			if err := json.Unmarshal(old, &ix); err != nil {
				return fmt.Errorf("%w: intent %s: %v", ErrCorrupt, id, err)
			}
			agent = ix.Agent
		}
		if err := deleteLive(tx, agent, id); err != nil {
			return err
		}
		if err := intents.Delete([]byte(id)); err != nil {
			return err
		}
	}
	for _, p := range w.putIntents {
		if err := intents.Put([]byte(p.id), p.val); err != nil {
			return err
		}
		if err := putLive(tx, bktIdxInflight, p.agent, p.id, p.task, p.policy, p.group); err != nil {
			return err
		}
	}
	return nil
}

// leaseAgent is the agent of the lease with this ID that w puts, if any.
func (w *write) leaseAgent(id string) (string, bool) {
	for i := range w.leases {
		if w.leases[i].id == id {
			return w.leases[i].ix.Agent, true
		}
	}
	return "", false
}

// writeAgents merges state changes and uses into the stored records
// (broker.Change.EachAgentUpdate).
func (w *write) writeAgents(tx *bolt.Tx) error {
	agents := tx.Bucket(bktAgents)
	return w.agents.EachAgentUpdate(func(id string, change func(*broker.AgentRecord)) error {
		rec := broker.AgentRecord{ID: id, State: broker.AgentActive}
		if v := agents.Get([]byte(id)); v != nil {
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("%w: agent %s: %v", ErrCorrupt, id, err)
			}
		}
		change(&rec)
		v, err := json.Marshal(rec)
		if err != nil {
			return fmt.Errorf("%w: encode agent %s: %v", ErrInvalidChange, id, err)
		}
		return agents.Put([]byte(id), v)
	})
}

// writeTemplates replaces the recorded template versions.
func (w *write) writeTemplates(tx *bolt.Tx) error {
	if w.templates == nil {
		return nil
	}
	if err := tx.DeleteBucket(bktTemplates); err != nil {
		return err
	}
	b, err := tx.CreateBucket(bktTemplates)
	if err != nil {
		return err
	}
	for _, t := range w.templates {
		if err := b.Put(t.k, t.v); err != nil {
			return err
		}
	}
	return nil
}

func (w *write) writeQueue(tx *bolt.Tx) error {
	if len(w.dequeue) == 0 && len(w.enqueue) == 0 {
		return nil
	}
	revs, due := tx.Bucket(bktRevocations), tx.Bucket(bktIdxDue)
	// unqueue removes id's record and its due-index entry.
	unqueue := func(id string) error {
		old := revs.Get([]byte(id))
		if old == nil {
			return nil
		}
		var r struct {
			NextAttempt time.Time `json:"next_attempt"`
		}
		if err := json.Unmarshal(old, &r); err != nil {
			return fmt.Errorf("%w: revocation %s: %v", ErrCorrupt, id, err)
		}
		if err := due.Delete(timeKey(r.NextAttempt, id)); err != nil {
			return err
		}
		return revs.Delete([]byte(id))
	}
	for _, id := range w.dequeue {
		if err := unqueue(id); err != nil {
			return err
		}
	}
	for _, r := range w.enqueue {
		if err := unqueue(r.id); err != nil {
			return err
		}
		if err := revs.Put([]byte(r.id), r.val); err != nil {
			return err
		}
		if err := due.Put(timeKey(r.next, r.id), nil); err != nil {
			return err
		}
	}
	return nil
}

// leaseBuckets are the lease record and its indexes, opened once per
// transaction.
type leaseBuckets struct {
	leases, agent, task, state, expiry, request, live *bolt.Bucket
}

func openLeaseBuckets(tx *bolt.Tx) leaseBuckets {
	b := leaseBuckets{
		leases:  tx.Bucket(bktLeases),
		agent:   tx.Bucket(bktIdxAgent),
		task:    tx.Bucket(bktIdxTask),
		state:   tx.Bucket(bktIdxState),
		expiry:  tx.Bucket(bktIdxExpiry),
		request: tx.Bucket(bktIdxRequest),
		live:    tx.Bucket(bktIdxLive),
	}
	// Lease IDs are ULIDs, so new leases land at the right edge of the
	// leases and of each range of the indexes (an agent's, a task's, a
	// state's; expiry times grow too). When an append splits a page, a
	// fuller left page wastes less space, and the page that takes the
	// next appends starts nearly empty: every transaction reads the pages
	// it touches into memory, key by key, so a lighter page costs less.
	for _, bk := range []*bolt.Bucket{b.leases, b.agent, b.task, b.state, b.expiry, b.live} {
		bk.FillPercent = 0.9
	}
	return b
}

// put stores one lease, first removing the index entries of the version it
// replaces so that no index points at a state the lease has left.
func (b leaseBuckets) put(l *leaseWrite) error {
	id := []byte(l.id)
	if old := b.leases.Get(id); old != nil {
		var prev leaseIndex
		if err := json.Unmarshal(old, &prev); err != nil {
			return fmt.Errorf("%w: lease %s: %v", ErrCorrupt, l.id, err)
		}
		if err := b.unindex(l.id, &prev, &l.ix); err != nil {
			return err
		}
	}
	if err := b.leases.Put(id, l.val); err != nil {
		return err
	}
	return b.index(l.id, &l.ix)
}

func (b leaseBuckets) index(id string, ix *leaseIndex) error {
	st := []byte(ix.State)
	if err := b.agent.Put(pairKey(ix.Agent, id), st); err != nil {
		return err
	}
	if err := b.task.Put(pairKey(ix.Task, id), st); err != nil {
		return err
	}
	if err := b.state.Put(pairKey(string(ix.State), id), nil); err != nil {
		return err
	}
	if ix.State == broker.StateActive {
		if err := b.expiry.Put(timeKey(ix.ExpiresAt, id), nil); err != nil {
			return err
		}
	}
	if err := b.indexLive(id, ix); err != nil {
		return err
	}
	if ix.RequestID != "" {
		// The newest lease for a request (say, a retry after a failed
		// mint) owns the key: that is the answer to replay.
		return putNewest(b.request, pairKey(ix.Agent, ix.RequestID), id)
	}
	return nil
}

// indexLive keeps the lease in the live index while its state may hold
// a credential. An index call of an unchanged agent overwrites the key, so
// unindex never needs to delete it.
func (b leaseBuckets) indexLive(id string, ix *leaseIndex) error {
	if ix.State.Live() {
		return b.live.Put(pairKey(ix.Agent, id), liveValue(ix.Task, ix.Refs.Policy, ix.Refs.Group))
	}
	return b.live.Delete(pairKey(ix.Agent, id))
}

// putNewest points k at id unless it points at a newer record already.
// IDs are ULIDs, which sort by time, so an update of an older record
// leaves the key alone.
func putNewest(b *bolt.Bucket, k []byte, id string) error {
	if cur := b.Get(k); cur != nil && string(cur) > id {
		return nil
	}
	return b.Put(k, []byte(id))
}

// unindex deletes the entries of the old version that the next version's
// index call will not overwrite. A state change keeps the agent and task
// keys (only their values, the state, change), so index overwrites those
// in place.
func (b leaseBuckets) unindex(id string, old, next *leaseIndex) error {
	if old.Agent != next.Agent {
		if err := b.agent.Delete(pairKey(old.Agent, id)); err != nil {
			return err
		}
		if err := b.live.Delete(pairKey(old.Agent, id)); err != nil {
			return err
		}
	}
	if old.Task != next.Task {
		if err := b.task.Delete(pairKey(old.Task, id)); err != nil {
			return err
		}
	}
	if old.State != next.State {
		if err := b.state.Delete(pairKey(string(old.State), id)); err != nil {
			return err
		}
	}
	if old.State == broker.StateActive &&
		(next.State != broker.StateActive || timeOrd(old.ExpiresAt) != timeOrd(next.ExpiresAt)) {
		if err := b.expiry.Delete(timeKey(old.ExpiresAt, id)); err != nil {
			return err
		}
	}
	if old.RequestID != "" && (old.RequestID != next.RequestID || old.Agent != next.Agent) {
		// Only if it is still ours: a newer lease may have taken it over.
		k := pairKey(old.Agent, old.RequestID)
		if string(b.request.Get(k)) == id {
			if err := b.request.Delete(k); err != nil {
				return err
			}
		}
	}
	return nil
}

// auditHead is the last event written: where the next one chains from.
type auditHead struct {
	seq  uint64
	hash string
}

func readHead(meta *bolt.Bucket) (auditHead, error) { return readAnchor(meta, keyAuditHead) }

func putHead(meta *bolt.Bucket, h auditHead) error { return putAnchor(meta, keyAuditHead, h) }

// readAnchor reads a record's sequence number and hash kept under key
// (the audit head, the last pruned record); zero when there is none.
func readAnchor(meta *bolt.Bucket, key []byte) (auditHead, error) {
	v := meta.Get(key)
	if v == nil {
		return auditHead{}, nil
	}
	if len(v) < 8 {
		return auditHead{}, fmt.Errorf("%w: %s is %d bytes", ErrCorrupt, key, len(v))
	}
	return auditHead{seq: binary.BigEndian.Uint64(v), hash: string(v[8:])}, nil
}

func putAnchor(meta *bolt.Bucket, key []byte, h auditHead) error {
	v := make([]byte, 8, 8+len(h.hash))
	binary.BigEndian.PutUint64(v, h.seq)
	return meta.Put(key, append(v, h.hash...))
}

// appendEvents chains events after the audit head, stores them and moves
// the head.
func appendEvents(tx *bolt.Tx, events []broker.Event) error {
	meta, audit := tx.Bucket(bktMeta), tx.Bucket(bktAudit)
	// Sequence keys only grow: pack pages full.
	audit.FillPercent = 1.0
	head, err := readHead(meta)
	if err != nil {
		return err
	}
	var prev *broker.Event
	if head.seq > 0 {
		prev = &broker.Event{Seq: head.seq, Hash: head.hash}
	}
	for i := range events {
		e := &events[i]
		e.Chain(prev)
		k := seqKey(e.Seq)
		if audit.Get(k) != nil {
			// The head was rolled back under a longer log: appending would
			// fork the chain. Refuse every write until someone looks.
			return fmt.Errorf("%w: %w: audit record %d exists past the audit head %d", broker.ErrStoreUnavailable, ErrCorrupt, e.Seq, head.seq)
		}
		v, err := json.Marshal(e)
		if err != nil {
			return fmt.Errorf("%w: encode event %d: %v", ErrInvalidChange, e.Seq, err)
		}
		if err := audit.Put(k, v); err != nil {
			return err
		}
		prev = e
	}
	return putHead(meta, auditHead{seq: prev.Seq, hash: prev.Hash})
}
