package etcdstore

import (
	"context"
	"encoding/json"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/latchbroker/latch/broker"
)

// The anchor, <prefix>/audit/pruned, is the last record pruned, its
// sequence and hash: where the chain in etcd starts (the record after it
// links to its hash), as boltstore keeps it.
func (c chain) anchorKey() string { return c.prefix + "pruned" }

// prunePage is how many records one request of PruneAudit deletes.
const prunePage = 10_000

// Anchor returns the last record pruned (PruneAudit), zero when none.
func (s *Store) Anchor(ctx context.Context) (seq uint64, hash string, err error) {
	if err := s.ready(); err != nil {
		return 0, "", err
	}
	v := &view{ctx: ctx, kv: s.cli}
	b, err := v.get(s.audit.anchorKey())
	if err != nil || b == nil {
		return 0, "", err
	}
	var h headRecord
	if err := json.Unmarshal(b, &h); err != nil {
		return 0, "", fmt.Errorf("%w: %w: the audit anchor: %v", broker.ErrStoreUnavailable, ErrCorrupt, err)
	}
	return h.Seq, h.Hash, nil
}

// PruneAudit deletes the audit records up to through, whose hash must be
// hash (the caller found it in an export that keeps them), keeping it as
// the anchor the rest of the chain links to, while replicas append. The
// anchor is written first, in a transaction that checks record through
// and the old anchor: a prune that stops part way leaves records the
// anchor covers, still chained, which verify starts after and the next
// prune deletes.
func (s *Store) PruneAudit(ctx context.Context, through uint64, hash string) (from uint64, err error) {
	if err := s.ready(); err != nil {
		return 0, err
	}
	t := newTxn(ctx, s.cli)
	old, err := t.get(s.audit.anchorKey())
	if err != nil {
		return 0, err
	}
	var anchor headRecord
	if old != nil {
		if err := json.Unmarshal(old, &anchor); err != nil {
			return 0, fmt.Errorf("%w: %w: the audit anchor: %v", broker.ErrStoreUnavailable, ErrCorrupt, err)
		}
	}
	if through <= anchor.Seq {
		return 0, fmt.Errorf("etcdstore: prune: records up to %d are pruned already", anchor.Seq)
	}
	v, err := t.get(s.audit.eventKey(through))
	if err != nil {
		return 0, err
	}
	var e broker.Event
	if v == nil || json.Unmarshal(v, &e) != nil || e.Hash != hash {
		return 0, fmt.Errorf("etcdstore: prune: record %d is not in etcd as the export holds it", through)
	}
	b, _ := json.Marshal(headRecord{Seq: through, Hash: hash})
	t.put(s.audit.anchorKey(), b)
	if err := t.commit(); err != nil {
		return 0, fmt.Errorf("etcdstore: prune: %w", err)
	}
	for start := anchor.Seq + 1; start <= through; start += prunePage {
		end := min(start+prunePage, through+1)
		if _, err := s.cli.Delete(ctx, s.audit.eventKey(start), clientv3.WithRange(s.audit.eventKey(end))); err != nil {
			return 0, unavailable("prune", err)
		}
	}
	return anchor.Seq + 1, nil
}
