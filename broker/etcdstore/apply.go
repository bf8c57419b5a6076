package etcdstore

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/templates"
)

// Apply makes c durable in one etcd transaction, grouped with this
// replica's concurrent Applys (commit.go), and returns c.Events chained
// after the audit head. The transaction reads what its changes depend on,
// decides their conditions, and commits only if none of that changed
// meanwhile — another replica's change included; otherwise it reads again
// and retries. So the changes of every replica are serializable, and the
// chain is one chain.
//
// Within a change, deletions run before puts (DeleteIntents before
// PutIntents, Dequeue before Enqueue); lease and approval puts maintain
// every index. Apply refuses what broker.Change.Check refuses, with
// broker.ErrInvalidChange and nothing written. Errors: ctx.Err() when ctx
// ends before the commit; broker.ErrStoreUnavailable wrapping etcd's
// error, or ErrCorrupt when a record it must read cannot be decoded. When
// the commit itself fails for want of etcd (a lost leader, a timeout), the
// change may or may not have been written, as with any etcd request.
func (s *Store) Apply(ctx context.Context, c broker.Change) ([]broker.Event, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := c.Check(); err != nil {
		return nil, fmt.Errorf("etcdstore: apply: %w", err)
	}
	now := s.now()
	p := &pending{c: &c, fence: fenceOf(ctx), events: make([]broker.Event, len(c.Events)), done: make(chan struct{})}
	for i, e := range c.Events {
		if e.Time.IsZero() {
			e.Time = now
		}
		p.events[i] = e
	}
	if err := s.commits.apply(ctx, p); err != nil {
		return nil, err
	}
	switch {
	case p.err != nil:
		return nil, p.err
	case p.failed != nil:
		return nil, p.failed
	}
	return p.out, nil
}

// write reads and writes c in t, chaining events in place; a failed
// condition writes nothing.
func (s *Store) write(t *txn, c *broker.Change, events []broker.Event, now time.Time) (*broker.ConditionFailed, error) {
	if failed, err := s.checkConditions(t, c.Conditions); failed != nil || err != nil {
		return failed, err
	}
	if failed, err := s.checkUnused(t, c.MarkDeleting); failed != nil || err != nil {
		return failed, err
	}
	steps := []func() error{
		func() error { return s.writeIntents(t, c) },
		func() error { s.writeMarks(t, c, now); return nil },
		func() error { return s.writeLeases(t, c.PutLeases) },
		func() error { return s.writeQueue(t, c) },
		func() error { return s.writeAgents(t, c) },
		func() error { return s.writeRecords(t, c) },
		func() error { return s.writeApprovals(t, c.PutApprovals) },
		func() error { return s.audit.appendIn(t, events) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return nil, err
		}
	}
	return nil, nil
}

// keysOf lists the keys that writing c will get, for prefetch: the
// records it replaces, the agents it updates, what its conditions name,
// the audit head.
func (s *Store) keysOf(c *broker.Change) []string {
	keys := []string{s.audit.headKey()}
	for _, id := range c.DeleteIntents {
		keys = append(keys, s.k.intent(id))
	}
	for _, l := range c.PutLeases {
		keys = append(keys, s.k.lease(l.ID))
		if l.RequestID != "" {
			keys = append(keys, s.k.index(ixRequest, l.Agent, l.RequestID))
		}
	}
	for _, id := range c.Dequeue {
		keys = append(keys, s.k.revocation(id))
	}
	for _, r := range c.Enqueue {
		keys = append(keys, s.k.revocation(r.LeaseID))
	}
	for _, a := range c.AgentStates {
		keys = append(keys, s.k.agent(a.ID))
	}
	for _, u := range c.Uses {
		keys = append(keys, s.k.agent(u.Agent))
	}
	for _, a := range c.PutApprovals {
		keys = append(keys, s.k.approval(a.ID))
		if a.RequestID != "" {
			keys = append(keys, s.k.index(ixApRequest, a.Agent, a.RequestID))
		}
	}
	if cd := c.Conditions; cd != nil {
		for _, k := range []struct{ name, key string }{
			{cd.Agent, s.k.agent(cd.Agent)}, {cd.Template, s.k.template(cd.Template)}, {cd.Policy, s.k.deleting(cd.Policy)},
			{cd.Group, s.k.retired(cd.Group)}, {cd.Intent, s.k.intent(cd.Intent)}, {cd.LeaseActive, s.k.lease(cd.LeaseActive)},
		} {
			if k.name != "" {
				keys = append(keys, k.key)
			}
		}
		if cd.NotFrozen {
			keys = append(keys, s.k.freeze())
		}
		if cd.Approval != nil {
			keys = append(keys, s.k.approval(cd.Approval.ID))
		}
		if r := cd.Request; r != nil {
			keys = append(keys, s.k.index(ixClaim, r.Agent, r.RequestID), s.k.index(ixRequest, r.Agent, r.RequestID))
		}
	}
	return keys
}

// decode reads one JSON record; one that does not decode is ErrCorrupt.
func decode[T any](what string, v []byte) (*T, error) {
	r := new(T)
	if err := json.Unmarshal(v, r); err != nil {
		return nil, fmt.Errorf("etcdstore: %w: %w: %s: %v", broker.ErrStoreUnavailable, ErrCorrupt, what, err)
	}
	return r, nil
}

func encode(what string, v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("%w: encode %s: %v", broker.ErrInvalidChange, what, err)
	}
	return b, nil
}

// checkConditions reports the first of c that the state t reads does not
// meet, in boltstore's order: the agent, the freeze, the template, the
// budgets, then the records c names.
func (s *Store) checkConditions(t *txn, c *broker.Conditions) (*broker.ConditionFailed, error) {
	if c == nil {
		return nil, nil
	}
	reason, err := s.checkStates(t, c)
	if err != nil || reason != "" {
		return failedFor(reason, err)
	}
	if c.MaxActive > 0 || c.MaxActiveTask > 0 {
		if failed, err := s.checkBudgets(t, c); failed != nil || err != nil {
			return failed, err
		}
	}
	return failedFor(s.checkRecords(t, c))
}

// failedFor is the outcome of a check: its error, else its failed
// condition, else nothing.
func failedFor(reason string, err error) (*broker.ConditionFailed, error) {
	if err != nil || reason == "" {
		return nil, err
	}
	return &broker.ConditionFailed{Reason: reason}, nil
}

// checkStates checks the agent's state, the freeze and the template
// version; it returns the reason of the first that fails.
func (s *Store) checkStates(t *txn, c *broker.Conditions) (string, error) {
	if c.Agent != "" {
		v, err := t.get(s.k.agent(c.Agent))
		if err != nil || v == nil {
			return "", err
		}
		rec, err := decode[broker.AgentRecord]("agent "+c.Agent, v)
		if err != nil {
			return "", err
		}
		switch rec.State {
		case broker.AgentPaused:
			return string(templates.ReasonAgentPaused), nil
		case broker.AgentQuarantined:
			return string(templates.ReasonAgentQuarantined), nil
		}
	}
	if c.NotFrozen {
		fs, err := s.freeze(t.get)
		if err != nil || fs.Active {
			return string(templates.ReasonGlobalFreeze), err
		}
	}
	if c.Template != "" {
		v, err := t.get(s.k.template(c.Template))
		if err != nil || string(v) != c.TemplateVersion {
			return broker.ReasonTemplateChanged, err
		}
	}
	return "", nil
}

// checkRecords checks the records c names: no deletion mark on its
// policy, no retirement of its group, its intent still stored, its lease
// still active.
func (s *Store) checkRecords(t *txn, c *broker.Conditions) (string, error) {
	for _, m := range []struct{ name, key, reason string }{
		{c.Policy, s.k.deleting(c.Policy), broker.ReasonPolicyDeleting},
		{c.Group, s.k.retired(c.Group), broker.ReasonGroupRetired},
	} {
		if m.name == "" {
			continue
		}
		if v, err := t.get(m.key); err != nil || v != nil {
			return m.reason, err
		}
	}
	if c.Intent != "" {
		if v, err := t.get(s.k.intent(c.Intent)); err != nil || v == nil {
			return broker.ReasonIntentGone, err
		}
	}
	if c.Approval != nil {
		v, err := t.get(s.k.approval(c.Approval.ID))
		if err != nil {
			return "", err
		}
		var a *broker.Approval
		if v != nil {
			if a, err = decode[broker.Approval]("approval "+c.Approval.ID, v); err != nil {
				return "", err
			}
		}
		if !c.Approval.Matches(a) {
			return broker.ReasonApprovalChanged, nil
		}
	}
	if c.Request != nil {
		if reason, err := s.checkRequest(t, c.Request); reason != "" || err != nil {
			return reason, err
		}
	}
	if c.LeaseActive != "" {
		v, err := t.get(s.k.lease(c.LeaseActive))
		if err != nil {
			return "", err
		}
		var ix leaseIndex
		if v != nil {
			if err := json.Unmarshal(v, &ix); err != nil {
				return "", fmt.Errorf("etcdstore: %w: %w: lease %s: %v", broker.ErrStoreUnavailable, ErrCorrupt, c.LeaseActive, err)
			}
		}
		if ix.State != broker.StateActive {
			return broker.ReasonLeaseNotActive, nil
		}
	}
	return "", nil
}

// checkRequest checks that no other intent claims r's request and that
// no lease of it delivered its secret.
func (s *Store) checkRequest(t *txn, r *broker.RequestClaim) (string, error) {
	claim, err := t.get(s.k.index(ixClaim, r.Agent, r.RequestID))
	if err != nil {
		return "", err
	}
	if claim != nil && string(claim) != r.Lease {
		return broker.ReasonRequestInFlight, nil
	}
	id, err := t.get(s.k.index(ixRequest, r.Agent, r.RequestID))
	if err != nil || id == nil {
		return "", err
	}
	v, err := t.get(s.k.lease(string(id)))
	if err != nil || v == nil {
		return "", err
	}
	l, err := decode[broker.Lease]("lease "+string(id), v)
	if err != nil {
		return "", err
	}
	if l.State != broker.StateFailed && !l.Withheld {
		return broker.ReasonRequestServed, nil
	}
	return "", nil
}

// checkBudgets counts what the agent holds from the live index: one key
// per live lease or intent, whose value starts with its task.
func (s *Store) checkBudgets(t *txn, c *broker.Conditions) (*broker.ConditionFailed, error) {
	all, ofTask := 0, 0
	err := t.scan(s.k.indexOf(ixLive, c.Agent), func(_ string, v []byte) {
		all++
		if task, _, _ := splitLive(v); task == c.Template {
			ofTask++
		}
	})
	switch {
	case err != nil:
		return nil, err
	case c.MaxActive > 0 && all >= c.MaxActive:
		return &broker.ConditionFailed{Reason: broker.ReasonAgentBudget, Held: all}, nil
	case c.MaxActiveTask > 0 && ofTask >= c.MaxActiveTask:
		return &broker.ConditionFailed{Reason: broker.ReasonTemplateBudget, Held: ofTask}, nil
	}
	return nil, nil
}

// checkUnused fails a mark of a shared policy that an intent or a live
// lease names (policy_in_use).
func (s *Store) checkUnused(t *txn, names []string) (*broker.ConditionFailed, error) {
	if len(names) == 0 {
		return nil, nil
	}
	live := map[string]bool{}
	err := t.scan(s.k.indexAll(ixLive), func(_ string, v []byte) {
		_, p, _ := splitLive(v)
		live[p] = true
	})
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		if live[n] {
			return &broker.ConditionFailed{Reason: broker.ReasonPolicyInUse}, nil
		}
	}
	return nil, nil
}

// liveValue and splitLive are the live index's value: task ␀ shared
// policy ␀ group.
func liveValue(task, policy, group string) []byte {
	return []byte(task + "\x00" + policy + "\x00" + group)
}

func splitLive(v []byte) (task, policy, group string) {
	task, rest, _ := strings.Cut(string(v), "\x00")
	policy, group, _ = strings.Cut(rest, "\x00")
	return task, policy, group
}

// leaseIndex is the part of a lease the indexes are built from.
type leaseIndex struct {
	Agent     string            `json:"agent"`
	Task      string            `json:"task"`
	RequestID string            `json:"request_id"`
	ExpiresAt time.Time         `json:"expires_at"`
	EndedAt   time.Time         `json:"ended_at"`
	State     broker.LeaseState `json:"state"`
	Refs      struct {
		Policy string `json:"policy"`
		Group  string `json:"group"`
	} `json:"refs"`
}

func indexOf(l *broker.Lease) leaseIndex {
	ix := leaseIndex{Agent: l.Agent, Task: l.Task, RequestID: l.RequestID, ExpiresAt: l.ExpiresAt, EndedAt: l.EndedAt, State: l.State}
	ix.Refs.Policy, ix.Refs.Group = l.Refs.Policy, l.Refs.Group
	return ix
}

func (s *Store) writeIntents(t *txn, c *broker.Change) error {
	for _, id := range c.DeleteIntents {
		v, err := t.get(s.k.intent(id))
		if err != nil || v == nil {
			return err
		}
		old, err := decode[leaseIndex]("intent "+id, v)
		if err != nil {
			return err
		}
		t.del(s.k.index(ixLive, old.Agent, id))
		t.del(s.k.intent(id))
		if err := unindexRequest(t, s.k.index(ixClaim, old.Agent, old.RequestID), id, old.RequestID != ""); err != nil {
			return err
		}
	}
	for _, l := range c.PutIntents {
		v, err := encode("intent "+l.ID, l)
		if err != nil {
			return err
		}
		t.put(s.k.intent(l.ID), v)
		t.put(s.k.index(ixLive, l.Agent, l.ID), liveValue(l.Task, l.Refs.Policy, l.Refs.Group))
		if l.RequestID != "" {
			t.put(s.k.index(ixClaim, l.Agent, l.RequestID), []byte(l.ID))
		}
	}
	return nil
}

func (s *Store) writeLeases(t *txn, leases []*broker.Lease) error {
	for _, l := range leases {
		v, err := encode("lease "+l.ID, l)
		if err != nil {
			return err
		}
		next := indexOf(l)
		old, err := t.get(s.k.lease(l.ID))
		if err != nil {
			return err
		}
		if old != nil {
			prev, err := decode[leaseIndex]("lease "+l.ID, old)
			if err != nil {
				return err
			}
			if err := s.unindex(t, l.ID, prev, &next); err != nil {
				return err
			}
		}
		t.put(s.k.lease(l.ID), v)
		if err := s.index(t, l.ID, &next); err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) index(t *txn, id string, ix *leaseIndex) error {
	st := []byte(ix.State)
	t.put(s.k.index(ixAgent, ix.Agent, id), st)
	t.put(s.k.index(ixTask, ix.Task, id), st)
	t.put(s.k.index(ixState, string(ix.State), id), nil)
	if ix.State == broker.StateActive {
		t.put(s.k.timeIndex(ixExpiry, ix.ExpiresAt, id), nil)
	}
	if ix.State.Ended() {
		t.put(s.k.timeIndex(ixEnded, ix.EndedAt, id), nil)
	}
	if ix.State.Live() {
		t.put(s.k.index(ixLive, ix.Agent, id), liveValue(ix.Task, ix.Refs.Policy, ix.Refs.Group))
	} else {
		t.del(s.k.index(ixLive, ix.Agent, id))
	}
	if ix.RequestID != "" {
		return putNewest(t, s.k.index(ixRequest, ix.Agent, ix.RequestID), id)
	}
	return nil
}

// putNewest points key at id unless it points at a newer record already:
// IDs are ULIDs, which sort by time, so an update of an older record
// leaves the key alone.
func putNewest(t *txn, key, id string) error {
	cur, err := t.get(key)
	if err != nil {
		return err
	}
	if cur == nil || string(cur) <= id {
		t.put(key, []byte(id))
	}
	return nil
}

// unindex deletes the entries of the old version that the next version's
// index will not overwrite.
func (s *Store) unindex(t *txn, id string, old, next *leaseIndex) error {
	if old.Agent != next.Agent {
		t.del(s.k.index(ixAgent, old.Agent, id))
		t.del(s.k.index(ixLive, old.Agent, id))
	}
	if old.Task != next.Task {
		t.del(s.k.index(ixTask, old.Task, id))
	}
	if old.State != next.State {
		t.del(s.k.index(ixState, string(old.State), id))
	}
	if old.State == broker.StateActive && (next.State != broker.StateActive || timeOrd(old.ExpiresAt) != timeOrd(next.ExpiresAt)) {
		t.del(s.k.timeIndex(ixExpiry, old.ExpiresAt, id))
	}
	if old.State.Ended() && (!next.State.Ended() || timeOrd(old.EndedAt) != timeOrd(next.EndedAt)) {
		t.del(s.k.timeIndex(ixEnded, old.EndedAt, id))
	}
	return unindexRequest(t, s.k.index(ixRequest, old.Agent, old.RequestID), id,
		old.RequestID != "" && (old.RequestID != next.RequestID || old.Agent != next.Agent))
}

// unindexRequest deletes a request index key when asked and it is still
// id's: a newer record may have taken it over.
func unindexRequest(t *txn, key, id string, asked bool) error {
	if !asked {
		return nil
	}
	cur, err := t.get(key)
	if err == nil && string(cur) == id {
		t.del(key)
	}
	return err
}

func (s *Store) writeQueue(t *txn, c *broker.Change) error {
	unqueue := func(id string) error {
		v, err := t.get(s.k.revocation(id))
		if err != nil || v == nil {
			return err
		}
		r, err := decode[broker.Revocation]("revocation "+id, v)
		if err != nil {
			return err
		}
		t.del(s.k.timeIndex(ixDue, r.NextAttempt, id))
		t.del(s.k.revocation(id))
		return nil
	}
	for _, id := range c.Dequeue {
		if err := unqueue(id); err != nil {
			return err
		}
	}
	for _, r := range c.Enqueue {
		if err := unqueue(r.LeaseID); err != nil {
			return err
		}
		v, err := encode("revocation "+r.LeaseID, r)
		if err != nil {
			return err
		}
		t.put(s.k.revocation(r.LeaseID), v)
		t.put(s.k.timeIndex(ixDue, r.NextAttempt, r.LeaseID), nil)
	}
	return nil
}

// writeAgents merges state changes and uses into the stored records
// (broker.Change.EachAgentUpdate).
func (s *Store) writeAgents(t *txn, c *broker.Change) error {
	return c.EachAgentUpdate(func(id string, change func(*broker.AgentRecord)) error {
		rec := &broker.AgentRecord{ID: id, State: broker.AgentActive}
		v, err := t.get(s.k.agent(id))
		if err != nil {
			return err
		}
		if v != nil {
			if rec, err = decode[broker.AgentRecord]("agent "+id, v); err != nil {
				return err
			}
		}
		change(rec)
		if v, err = encode("agent "+id, rec); err != nil {
			return err
		}
		t.put(s.k.agent(id), v)
		return nil
	})
}

// writeRecords writes the single records: freeze, grants, templates.
func (s *Store) writeRecords(t *txn, c *broker.Change) error {
	if c.Freeze != nil {
		v, err := encode("freeze", c.Freeze)
		if err != nil {
			return err
		}
		t.put(s.k.freeze(), v)
	}
	if c.Grants != nil {
		v, err := encode("grants", c.Grants)
		if err != nil {
			return err
		}
		t.put(s.k.grants(), v)
	}
	if c.Templates == nil {
		return nil
	}
	err := t.scan(s.k.templates(), func(k string, _ []byte) { t.del(k) })
	for name, version := range c.Templates {
		t.put(s.k.template(name), []byte(version))
	}
	return err
}

// retiredMark is a retired group's value.
type retiredMark struct {
	Backend string    `json:"backend"`
	At      time.Time `json:"at"`
}

// writeMarks clears, then sets, the marks of shared policies being deleted
// and of retired groups.
func (s *Store) writeMarks(t *txn, c *broker.Change, now time.Time) {
	for _, n := range c.DoneDeleting {
		t.del(s.k.deleting(n))
	}
	for _, n := range c.MarkDeleting {
		t.put(s.k.deleting(n), []byte{1})
	}
	for _, g := range c.ForgetGroups {
		t.del(s.k.retired(g))
	}
	for _, g := range c.RetireGroups {
		v, _ := json.Marshal(retiredMark{Backend: g.Backend, At: now.UTC()})
		t.put(s.k.retired(g.Group), v)
	}
}

func (s *Store) writeApprovals(t *txn, as []*broker.Approval) error {
	for _, a := range as {
		v, err := encode("approval "+a.ID, a)
		if err != nil {
			return err
		}
		old, err := t.get(s.k.approval(a.ID))
		if err != nil {
			return err
		}
		if old != nil {
			prev, err := decode[broker.Approval]("approval "+a.ID, old)
			if err != nil {
				return err
			}
			t.del(s.k.index(ixApStatus, string(prev.Status), a.ID))
			t.del(s.k.index(ixApAgent, prev.Agent, a.ID))
			if prev.Status.Open() {
				t.del(s.k.timeIndex(ixApDue, prev.Deadline(), a.ID))
			}
			if err := unindexRequest(t, s.k.index(ixApRequest, prev.Agent, prev.RequestID), a.ID, prev.RequestID != ""); err != nil {
				return err
			}
		}
		t.put(s.k.approval(a.ID), v)
		t.put(s.k.index(ixApStatus, string(a.Status), a.ID), nil)
		t.put(s.k.index(ixApAgent, a.Agent, a.ID), []byte(a.Status))
		if a.Status.Open() {
			t.put(s.k.timeIndex(ixApDue, a.Deadline(), a.ID), nil)
		}
		if a.RequestID != "" {
			if err := putNewest(t, s.k.index(ixApRequest, a.Agent, a.RequestID), a.ID); err != nil {
				return err
			}
		}
	}
	return nil
}
