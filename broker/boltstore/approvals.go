package boltstore

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/latchbroker/latch/broker"
)

// Approval buckets. See doc.go for what each holds.
var (
	bktApprovals           = []byte("approvals")
	bktIdxApprovalStatus   = []byte("idx_approval_status")
	bktIdxApprovalAgent    = []byte("idx_approval_agent")
	bktIdxApprovalRequest  = []byte("idx_approval_request")
	bktIdxApprovalDeadline = []byte("idx_approval_deadline")
)

// approvalIndex is the part of an approval the indexes are built from;
// the old version of an approval is decoded into it to find its entries.
type approvalIndex struct {
	Agent     string                `json:"agent"`
	RequestID string                `json:"request_id"`
	Status    broker.ApprovalStatus `json:"status"`
	ExpiresAt time.Time             `json:"expires_at"`
	PickupBy  time.Time             `json:"pickup_by"`
}

// deadline is when the sweeper must look at the approval again: the end
// of the review while pending, of the pickup once approved. Closed
// approvals have none and leave the deadline index.
func (ix *approvalIndex) deadline() (time.Time, bool) {
	a := broker.Approval{Status: ix.Status, ExpiresAt: ix.ExpiresAt, PickupBy: ix.PickupBy}
	return a.Deadline(), ix.Status.Open()
}

type approvalWrite struct {
	id  string
	val []byte
	ix  approvalIndex
}

// prepareApprovals encodes the approvals of a change.
func prepareApprovals(as []*broker.Approval) ([]approvalWrite, error) {
	var out []approvalWrite
	for _, a := range as {
		v, err := json.Marshal(a)
		if err != nil {
			return nil, fmt.Errorf("%w: encode approval %s: %v", ErrInvalidChange, a.ID, err)
		}
		out = append(out, approvalWrite{id: a.ID, val: v, ix: approvalIndex{
			Agent: a.Agent, RequestID: a.RequestID, Status: a.Status, ExpiresAt: a.ExpiresAt, PickupBy: a.PickupBy,
		}})
	}
	return out, nil
}

// approvalBuckets are the approval record and its indexes, opened once per
// transaction.
type approvalBuckets struct {
	records, status, agent, request, deadline *bolt.Bucket
}

func openApprovalBuckets(tx *bolt.Tx) approvalBuckets {
	return approvalBuckets{
		records:  tx.Bucket(bktApprovals),
		status:   tx.Bucket(bktIdxApprovalStatus),
		agent:    tx.Bucket(bktIdxApprovalAgent),
		request:  tx.Bucket(bktIdxApprovalRequest),
		deadline: tx.Bucket(bktIdxApprovalDeadline),
	}
}

// writeApprovals stores approvals in tx, keeping every index in step.
func writeApprovals(tx *bolt.Tx, as []approvalWrite) error {
	if len(as) == 0 {
		return nil
	}
	b := openApprovalBuckets(tx)
	for i := range as {
		if err := b.put(&as[i]); err != nil {
			return err
		}
	}
	return nil
}

// put stores one approval, first removing every index entry of the
// version it replaces: an approval changes a handful of times in its
// life, so rewriting its few entries costs nothing worth saving.
func (b approvalBuckets) put(w *approvalWrite) error {
	id := []byte(w.id)
	if old := b.records.Get(id); old != nil {
		var prev approvalIndex
		if err := json.Unmarshal(old, &prev); err != nil {
			return fmt.Errorf("%w: approval %s: %v", ErrCorrupt, w.id, err)
		}
		if err := b.unindex(w.id, &prev); err != nil {
			return err
		}
	}
	if err := b.records.Put(id, w.val); err != nil {
		return err
	}
	return b.index(w.id, &w.ix)
}

func (b approvalBuckets) index(id string, ix *approvalIndex) error {
	if err := b.status.Put(pairKey(string(ix.Status), id), nil); err != nil {
		return err
	}
	if err := b.agent.Put(pairKey(ix.Agent, id), []byte(ix.Status)); err != nil {
		return err
	}
	if t, ok := ix.deadline(); ok {
		if err := b.deadline.Put(timeKey(t, id), nil); err != nil {
			return err
		}
	}
	if ix.RequestID != "" {
		// The newest approval for a request owns the key, as for leases.
		return putNewest(b.request, pairKey(ix.Agent, ix.RequestID), id)
	}
	return nil
}

func (b approvalBuckets) unindex(id string, old *approvalIndex) error {
	if err := b.status.Delete(pairKey(string(old.Status), id)); err != nil {
		return err
	}
	if err := b.agent.Delete(pairKey(old.Agent, id)); err != nil {
		return err
	}
	if t, ok := old.deadline(); ok {
		if err := b.deadline.Delete(timeKey(t, id)); err != nil {
			return err
		}
	}
	if old.RequestID != "" {
		// Only if it is still ours: a newer approval may have taken it.
		k := pairKey(old.Agent, old.RequestID)
		if string(b.request.Get(k)) == id {
			if err := b.request.Delete(k); err != nil {
				return err
			}
		}
	}
	return nil
}

// reindexApprovals rebuilds the approval indexes from the records. There
// are few approvals (people decide each one), so one transaction holds
// them all.
func reindexApprovals(tx *bolt.Tx) error {
	b := openApprovalBuckets(tx)
	return b.records.ForEach(func(k, v []byte) error {
		var ix approvalIndex
		if err := json.Unmarshal(v, &ix); err != nil {
			return fmt.Errorf("%w: approval %s: %v", ErrCorrupt, k, err)
		}
		return b.index(string(k), &ix)
	})
}

// Approval returns one approval; broker.ErrApprovalNotFound when there is
// none.
func (s *Store) Approval(ctx context.Context, id string) (*broker.Approval, error) {
	return get[broker.Approval](ctx, s, approvalRecords, id)
}

// ApprovalByRequest returns the newest approval the agent's request ID
// produced; broker.ErrApprovalNotFound when there is none.
func (s *Store) ApprovalByRequest(ctx context.Context, agent, requestID string) (*broker.Approval, error) {
	return byRequest[broker.Approval](ctx, s, approvalRecords, agent, requestID)
}

// Approvals returns the approvals that match f, newest first, at most
// f.Limit. It walks the agent index when f names an agent (whose values
// are the statuses, so other statuses are skipped undecoded), else the
// status index, else every approval.
func (s *Store) Approvals(ctx context.Context, f broker.ApprovalFilter) ([]*broker.Approval, error) {
	out := []*broker.Approval{}
	err := s.view(ctx, "list approvals", func(tx *bolt.Tx) error {
		records := tx.Bucket(bktApprovals)
		var it *prefixIter
		check, inline := false, false
		switch {
		case f.Agent != "":
			it, check = newPrefixIter(tx.Bucket(bktIdxApprovalAgent).Cursor(), prefixKey(f.Agent), nil), true
		case f.Status != "":
			it = newPrefixIter(tx.Bucket(bktIdxApprovalStatus).Cursor(), prefixKey(string(f.Status)), nil)
		default:
			it, inline = newPrefixIter(records.Cursor(), nil, nil), true
		}
		for n := 0; it.id() != nil; n++ {
			if n%checkEvery == checkEvery-1 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			id := it.id()
			if !check || f.Status == "" || string(it.v) == string(f.Status) {
				v := it.v
				if !inline {
					if v = records.Get(id); v == nil {
						return fmt.Errorf("%w: an index names approval %s, which does not exist", ErrCorrupt, id)
					}
				}
				a, err := decode[broker.Approval]("approval "+string(id), v)
				if err != nil {
					return err
				}
				if f.Match(a) {
					out = append(out, a)
					if f.Limit > 0 && len(out) >= f.Limit {
						return nil
					}
				}
			}
			it.next()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// ExpiringApprovals returns open approvals whose deadline is before now
// (pending past ExpiresAt, approved past PickupBy), soonest first, at most
// limit (no bound when limit ≤ 0).
func (s *Store) ExpiringApprovals(ctx context.Context, now time.Time, limit int) ([]*broker.Approval, error) {
	return expiring(ctx, s, approvalRecords, bktIdxApprovalDeadline, now, limit, func(a *broker.Approval) bool { return a.Status.Open() })
}

// CountApprovals counts the approvals in status from the status index.
func (s *Store) CountApprovals(ctx context.Context, status broker.ApprovalStatus) (int, error) {
	n := 0
	err := s.view(ctx, "count approvals", func(tx *bolt.Tx) error {
		prefix := prefixKey(string(status))
		c := tx.Bucket(bktIdxApprovalStatus).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			n++
		}
		return nil
	})
	return n, err
}
