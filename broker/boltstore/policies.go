package boltstore

import (
	"context"

	bolt "go.etcd.io/bbolt"

	"github.com/latchbroker/latch/broker"
)

// bktPolicyDeleting holds the shared policies being deleted (name → 1:
// bbolt's Get does not tell an empty value from a missing key).
// It is made by the first mark, so that files of older latches open
// read-only without it: a missing bucket is no mark.
var bktPolicyDeleting = []byte("policies_deleting")

func preparePolicies(w *write, c broker.Change) error {
	w.markDeleting, w.doneDeleting = c.MarkDeleting, c.DoneDeleting
	return nil
}

// checkUnused fails a mark of a policy that an intent or a live lease
// names (policy_in_use).
func checkUnused(tx *bolt.Tx, names []string) *broker.ConditionFailed {
	if len(names) == 0 {
		return nil
	}
	live, _ := liveRefs(tx)
	for _, n := range names {
		if live[n] {
			return &broker.ConditionFailed{Reason: broker.ReasonPolicyInUse}
		}
	}
	return nil
}

// liveRefs reads the policies and groups the live and in-flight indexes
// name: one walk of their keys, no record decoded.
func liveRefs(tx *bolt.Tx) (policies, groups map[string]bool) {
	policies, groups = map[string]bool{}, map[string]bool{}
	for _, b := range liveBuckets(tx) {
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			_, p, g := splitLive(v)
			if len(p) > 0 {
				policies[string(p)] = true
			}
			if len(g) > 0 {
				groups[string(g)] = true
			}
		}
	}
	return policies, groups
}

// marked reports whether name has a mark in bkt (policies_deleting,
// groups_retired); a bucket not made yet holds none.
func marked(tx *bolt.Tx, bkt []byte, name string) bool {
	b := tx.Bucket(bkt)
	return b != nil && b.Get([]byte(name)) != nil
}

// writeMarks deletes the marks of del from bkt, then puts those of put,
// making bkt when there is something to write.
func writeMarks(tx *bolt.Tx, bkt []byte, del []string, put []kv) error {
	if len(del) == 0 && len(put) == 0 {
		return nil
	}
	b, err := tx.CreateBucketIfNotExists(bkt)
	if err != nil {
		return err
	}
	for _, n := range del {
		if err := b.Delete([]byte(n)); err != nil {
			return err
		}
	}
	for _, m := range put {
		if err := b.Put(m.k, m.v); err != nil {
			return err
		}
	}
	return nil
}

func (w *write) writePolicyMarks(tx *bolt.Tx) error {
	put := make([]kv, len(w.markDeleting))
	for i, n := range w.markDeleting {
		put[i] = kv{[]byte(n), []byte{1}}
	}
	return writeMarks(tx, bktPolicyDeleting, w.doneDeleting, put)
}

// PolicyUse implements broker.Store.
func (s *Store) PolicyUse(ctx context.Context) (broker.PolicyUse, error) {
	var use broker.PolicyUse
	err := s.view(ctx, "policy use", func(tx *bolt.Tx) error {
		use.Live, use.LiveGroups = liveRefs(tx)
		if b := tx.Bucket(bktPolicyDeleting); b != nil {
			return b.ForEach(func(k, _ []byte) error {
				use.Deleting = append(use.Deleting, string(k))
				return nil
			})
		}
		return nil
	})
	return use, err
}
