package boltstore

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/templates"
)

// checkConditions reports the first of c that the state in tx does not
// meet, nil when all hold. It runs in the transaction that writes the
// change, before any of it is written, so it sees every change committed
// before — including those earlier in the same group commit.
func checkConditions(tx *bolt.Tx, c *broker.Conditions) (*broker.ConditionFailed, error) {
	if c == nil {
		return nil, nil
	}
	if c.Agent != "" {
		if failed, err := checkAgentState(tx, c.Agent); failed != nil || err != nil {
			return failed, err
		}
	}
	if c.NotFrozen {
		var fs broker.FreezeState
		if v := tx.Bucket(bktFreeze).Get(keyFreeze); v != nil {
			if err := json.Unmarshal(v, &fs); err != nil {
				return nil, fmt.Errorf("%w: freeze: %v", ErrCorrupt, err)
			}
		}
		if fs.Active {
			return &broker.ConditionFailed{Reason: string(templates.ReasonGlobalFreeze)}, nil
		}
	}
	if c.Template != "" && string(tx.Bucket(bktTemplates).Get([]byte(c.Template))) != c.TemplateVersion {
		return &broker.ConditionFailed{Reason: broker.ReasonTemplateChanged}, nil
	}
	if c.MaxActive > 0 || c.MaxActiveTask > 0 {
		if failed := checkBudgets(tx, c); failed != nil {
			return failed, nil
		}
	}
	if c.Policy != "" && marked(tx, bktPolicyDeleting, c.Policy) {
		return &broker.ConditionFailed{Reason: broker.ReasonPolicyDeleting}, nil
	}
	if c.Group != "" && marked(tx, bktGroupsRetired, c.Group) {
		return &broker.ConditionFailed{Reason: broker.ReasonGroupRetired}, nil
	}
	if c.Intent != "" && tx.Bucket(bktIntents).Get([]byte(c.Intent)) == nil {
		return &broker.ConditionFailed{Reason: broker.ReasonIntentGone}, nil
	}
	if c.Approval != nil {
		if failed, err := checkApproval(tx, c.Approval); failed != nil || err != nil {
			return failed, err
		}
	}
	if c.Request != nil {
		if failed, err := checkRequest(tx, c.Request); failed != nil || err != nil {
			return failed, err
		}
	}
	if c.LeaseActive != "" {
		v := tx.Bucket(bktLeases).Get([]byte(c.LeaseActive))
		var ix leaseIndex
		if v != nil {
			if err := json.Unmarshal(v, &ix); err != nil {
				return nil, fmt.Errorf("%w: lease %s: %v", ErrCorrupt, c.LeaseActive, err)
			}
		}
		if ix.State != broker.StateActive {
			return &broker.ConditionFailed{Reason: broker.ReasonLeaseNotActive}, nil
		}
	}
	return nil, nil
}

func checkAgentState(tx *bolt.Tx, agent string) (*broker.ConditionFailed, error) {
	v := tx.Bucket(bktAgents).Get([]byte(agent))
	if v == nil {
		return nil, nil
	}
	var rec struct {
		State broker.AgentState `json:"state"`
	}
	if err := json.Unmarshal(v, &rec); err != nil {
		return nil, fmt.Errorf("%w: agent %s: %v", ErrCorrupt, agent, err)
	}
	switch rec.State {
	case broker.AgentPaused:
		return &broker.ConditionFailed{Reason: string(templates.ReasonAgentPaused)}, nil
	case broker.AgentQuarantined:
		return &broker.ConditionFailed{Reason: string(templates.ReasonAgentQuarantined)}, nil
	}
	return nil, nil
}

// checkBudgets counts what the agent holds from the live and in-flight
// indexes: one key per live lease or intent, whose value is its task.
func checkBudgets(tx *bolt.Tx, c *broker.Conditions) *broker.ConditionFailed {
	all, ofTask := 0, 0
	prefix := prefixKey(c.Agent)
	task := []byte(c.Template)
	for _, b := range liveBuckets(tx) {
		cur := b.Cursor()
		for k, v := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = cur.Next() {
			all++
			if t, _, _ := splitLive(v); bytes.Equal(t, task) {
				ofTask++
			}
		}
	}
	switch {
	case c.MaxActive > 0 && all >= c.MaxActive:
		return &broker.ConditionFailed{Reason: broker.ReasonAgentBudget, Held: all}
	case c.MaxActiveTask > 0 && ofTask >= c.MaxActiveTask:
		return &broker.ConditionFailed{Reason: broker.ReasonTemplateBudget, Held: ofTask}
	}
	return nil
}

// The live index, agent ␀ lease ID → task (␀ shared policy (␀ group)),
// has every lease in a state that may still hold a credential; the
// in-flight index, in the same form, every intent. Budgets count both;
// policy and group collection read both. Intents have their own small
// index so that an issue's intent, written in one transaction and ended
// in the next, touches one page of it rather than a page of the live
// index (keyed by agent, so scattered) each time. (A file written before
// idx_inflight existed keeps its intents' keys in idx_live: they are
// counted the same, and deleteLive removes them from either.)
func liveBuckets(tx *bolt.Tx) []*bolt.Bucket {
	live := []*bolt.Bucket{tx.Bucket(bktIdxLive)}
	if b := tx.Bucket(bktIdxInflight); b != nil { // nil in an older file opened read-only
		live = append(live, b)
	}
	return live
}

// putLive puts a live lease's key in the live index, or an intent's in
// the in-flight index.
func putLive(tx *bolt.Tx, bkt []byte, agent, id, task, policy, group string) error {
	return tx.Bucket(bkt).Put(pairKey(agent, id), liveValue(task, policy, group))
}

func liveValue(task, policy, group string) []byte {
	switch {
	case group != "":
		return []byte(task + "\x00" + policy + "\x00" + group)
	case policy != "":
		return []byte(task + "\x00" + policy)
	}
	return []byte(task)
}

// splitLive reads a live index value back (of older latches too, which
// wrote no group).
func splitLive(v []byte) (task, policy, group []byte) {
	task, rest, _ := bytes.Cut(v, []byte{0})
	policy, group, _ = bytes.Cut(rest, []byte{0})
	return task, policy, group
}

// deleteLive deletes an intent's key from both indexes (see liveBuckets).
func deleteLive(tx *bolt.Tx, agent, id string) error {
	for _, b := range liveBuckets(tx) {
		if err := b.Delete(pairKey(agent, id)); err != nil {
			return err
		}
	}
	return nil
}

// buildLive fills the in-flight index from the intents and the live
// index from the state index's live leases: the migration to schema 2,
// and Reindex.
func buildLive(tx *bolt.Tx) error {
	err := tx.Bucket(bktIntents).ForEach(func(k, v []byte) error {
		var ix leaseIndex
		if err := json.Unmarshal(v, &ix); err != nil {
			return fmt.Errorf("%w: intent %s: %v", ErrCorrupt, k, err)
		}
		return putLive(tx, bktIdxInflight, ix.Agent, string(k), ix.Task, ix.Refs.Policy, ix.Refs.Group)
	})
	if err != nil {
		return err
	}
	leases := tx.Bucket(bktLeases)
	for _, st := range []broker.LeaseState{broker.StatePending, broker.StateActive, broker.StateRevoking, broker.StateIrrevocable} {
		prefix := prefixKey(string(st))
		cur := tx.Bucket(bktIdxState).Cursor()
		for k, _ := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = cur.Next() {
			id := k[len(prefix):]
			var ix leaseIndex
			if err := json.Unmarshal(leases.Get(id), &ix); err != nil {
				return fmt.Errorf("%w: lease %s: %v", ErrCorrupt, id, err)
			}
			if err := putLive(tx, bktIdxLive, ix.Agent, string(id), ix.Task, ix.Refs.Policy, ix.Refs.Group); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkRequest checks that no other intent holds r's request (intents
// are the requests in flight: a scan is short) and that no lease of it
// delivered its secret.
func checkRequest(tx *bolt.Tx, r *broker.RequestClaim) (*broker.ConditionFailed, error) {
	inFlight := errors.New("in flight")
	err := tx.Bucket(bktIntents).ForEach(func(k, v []byte) error {
		var ix leaseIndex
		if err := json.Unmarshal(v, &ix); err != nil {
			return fmt.Errorf("%w: intent %s: %v", ErrCorrupt, k, err)
		}
		if string(k) != r.Lease && ix.Agent == r.Agent && ix.RequestID == r.RequestID {
			return inFlight
		}
		return nil
	})
	switch {
	case errors.Is(err, inFlight):
		return &broker.ConditionFailed{Reason: broker.ReasonRequestInFlight}, nil
	case err != nil:
		return nil, err
	}
	id := tx.Bucket(bktIdxRequest).Get(pairKey(r.Agent, r.RequestID))
	if id == nil {
		return nil, nil
	}
	var l broker.Lease
	if v := tx.Bucket(bktLeases).Get(id); v != nil {
		if err := json.Unmarshal(v, &l); err != nil {
			return nil, fmt.Errorf("%w: lease %s: %v", ErrCorrupt, id, err)
		}
		if l.State != broker.StateFailed && !l.Withheld {
			return &broker.ConditionFailed{Reason: broker.ReasonRequestServed}, nil
		}
	}
	return nil, nil
}

// checkApproval checks that the approval is stored as v.
func checkApproval(tx *bolt.Tx, v *broker.ApprovalVersion) (*broker.ConditionFailed, error) {
	var a *broker.Approval
	if b := tx.Bucket(bktApprovals).Get([]byte(v.ID)); b != nil {
		if err := json.Unmarshal(b, &a); err != nil {
			return nil, fmt.Errorf("%w: approval %s: %v", ErrCorrupt, v.ID, err)
		}
	}
	if !v.Matches(a) {
		return &broker.ConditionFailed{Reason: broker.ReasonApprovalChanged}, nil
	}
	return nil, nil
}
