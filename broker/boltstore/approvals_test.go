package boltstore

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/latchbroker/latch/broker"
)

func TestReindex_Approvals(t *testing.T) {
	path := filepath.Join(t.TempDir(), "latch.db")
	s, err := Open(path, Options{Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	g := newIDs()
	var c broker.Change
	for i, st := range []broker.ApprovalStatus{broker.ApprovalPending, broker.ApprovalApproved, broker.ApprovalDenied, broker.ApprovalConsumed} {
		c.PutApprovals = append(c.PutApprovals, approval(g.Next(), fmt.Sprintf("agent-%d", i%2), fmt.Sprintf("req-%d", i), st, t0.Add(time.Hour)))
	}
	apply(t, s, c)
	type view struct{ all, pending, agent0, due []string }
	look := func(s *Store) view {
		ctx := context.Background()
		all, _ := s.Approvals(ctx, broker.ApprovalFilter{})
		pending, _ := s.Approvals(ctx, broker.ApprovalFilter{Status: broker.ApprovalPending})
		agent0, _ := s.Approvals(ctx, broker.ApprovalFilter{Agent: "agent-0"})
		due, _ := s.ExpiringApprovals(ctx, maxTime, 0)
		return view{approvalIDs(all), approvalIDs(pending), approvalIDs(agent0), approvalIDs(due)}
	}
	before := look(s)
	if len(before.all) != 4 || len(before.pending) != 1 || len(before.agent0) != 2 || len(before.due) != 2 {
		t.Fatalf("before reindex: %+v", before)
	}
	s.Close()

	if err := Reindex(path, nil); err != nil {
		t.Fatal(err)
	}
	s = openAt(t, path, Options{})
	if after := look(s); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("after reindex %+v, before %+v", after, before)
	}
	if got, err := s.ApprovalByRequest(context.Background(), "agent-1", "req-1"); err != nil || got.ID != before.all[2] {
		t.Fatalf("ApprovalByRequest after reindex = %+v, %v", got, err)
	}
}

// A file written before approvals existed gets their buckets at the next
// read-write open, with no schema change.
func TestOpen_AddsApprovalBuckets(t *testing.T) {
	path := filepath.Join(t.TempDir(), "latch.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bktApprovals, bktIdxApprovalStatus, bktIdxApprovalAgent, bktIdxApprovalRequest, bktIdxApprovalDeadline} {
			if err := tx.DeleteBucket(b); err != nil {
				return err
			}
		}
		return nil
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	s = openAt(t, path, Options{})
	a := approval(newIDs().Next(), "agent-1", "", broker.ApprovalPending, t0.Add(time.Hour))
	apply(t, s, broker.Change{PutApprovals: []*broker.Approval{a}})
	if _, err := s.Approval(context.Background(), a.ID); err != nil {
		t.Fatal(err)
	}
}
