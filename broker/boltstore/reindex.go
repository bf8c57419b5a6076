package boltstore

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/latchbroker/latch/broker"
)

// keyReindex in meta marks an index rebuild in progress. Open finishes an
// interrupted one before it serves, so a half-built index is never read.
var keyReindex = []byte("reindex")

// reindexChunk is how many leases one rebuild transaction indexes: bbolt
// keeps a transaction's dirty pages in memory, so a million leases in one
// transaction would hold gigabytes.
const reindexChunkSize = 50_000

// indexBuckets are the buckets Reindex derives; everything else is a
// record.
var indexBuckets = [][]byte{bktIdxLive, bktIdxInflight, bktIdxAgent, bktIdxTask, bktIdxState, bktIdxExpiry, bktIdxRequest, bktIdxDue,
	bktIdxApprovalStatus, bktIdxApprovalAgent, bktIdxApprovalRequest, bktIdxApprovalDeadline}

// Reindex rebuilds every index of the database at path from the lease,
// revocation and approval records. Indexes are written in the same transaction as their
// records, so a healthy store never needs this; it is the tool for a
// migration that changes an index's encoding and for repair after
// ErrCorrupt. The file must not be held by a server. An interrupted rebuild
// is finished by the next Open. progress, if not nil, is called after each
// chunk with the leases indexed and the leases stored.
func Reindex(path string, progress func(done, total uint64)) error {
	s, err := Open(path, Options{})
	if err != nil {
		return err
	}
	defer s.Close()
	return s.reindex(progress)
}

// reindex drops the indexes and rebuilds them in chunks. The marker in
// meta is set in the transaction that drops them and cleared in the one
// that finishes, so a crash in between leaves a file that Open rebuilds.
func (s *Store) reindex(progress func(done, total uint64)) error {
	var total uint64
	err := s.db.Update(func(tx *bolt.Tx) error {
		total = uint64(tx.Bucket(bktLeases).Stats().KeyN)
		for _, name := range indexBuckets {
			if err := tx.DeleteBucket(name); err != nil {
				return err
			}
			if _, err := tx.CreateBucket(name); err != nil {
				return err
			}
		}
		return tx.Bucket(bktMeta).Put(keyReindex, []byte{1})
	})
	if err != nil {
		return fmt.Errorf("boltstore: reindex %s: %w", s.path, err)
	}

	var after []byte // last lease indexed
	var done uint64
	for {
		n := 0
		err := s.db.Update(func(tx *bolt.Tx) error {
			var err error
			n, after, err = reindexChunk(tx, after)
			return err
		})
		if err != nil {
			return fmt.Errorf("boltstore: reindex %s: %w", s.path, err)
		}
		done += uint64(n)
		if progress != nil {
			progress(done, total)
		}
		if n < reindexChunkSize {
			break
		}
	}

	err = s.db.Update(func(tx *bolt.Tx) error {
		due := tx.Bucket(bktIdxDue)
		err := tx.Bucket(bktRevocations).ForEach(func(k, v []byte) error {
			var r struct {
				NextAttempt time.Time `json:"next_attempt"`
			}
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("%w: revocation %s: %v", ErrCorrupt, k, err)
			}
			return due.Put(timeKey(r.NextAttempt, string(k)), nil)
		})
		if err != nil {
			return err
		}
		if err := reindexApprovals(tx); err != nil {
			return err
		}
		if err := buildLive(tx); err != nil {
			return err
		}
		return tx.Bucket(bktMeta).Delete(keyReindex)
	})
	if err != nil {
		return fmt.Errorf("boltstore: reindex %s: %w", s.path, err)
	}
	return nil
}

// reindexChunk indexes up to reindexChunkSize leases after the lease ID
// after (from the first when nil) and returns how many it did and the last
// one. Each index's entries are sorted before they are written: bbolt
// splits nodes only at commit, so entries put in random order into one node
// cost a copy of the node each, and a chunk of them went quadratic.
func reindexChunk(tx *bolt.Tx, after []byte) (int, []byte, error) {
	b := openLeaseBuckets(tx)
	var agent, task, state, expiry, request []kv
	c := b.leases.Cursor()
	k, v := c.First()
	if after != nil {
		if k, v = c.Seek(after); k != nil && bytes.Equal(k, after) {
			k, v = c.Next()
		}
	}
	n := 0
	for ; k != nil && n < reindexChunkSize; k, v = c.Next() {
		var ix leaseIndex
		if err := json.Unmarshal(v, &ix); err != nil {
			return 0, nil, fmt.Errorf("%w: lease %s: %v", ErrCorrupt, k, err)
		}
		id := string(k)
		st := []byte(ix.State)
		agent = append(agent, kv{pairKey(ix.Agent, id), st})
		task = append(task, kv{pairKey(ix.Task, id), st})
		state = append(state, kv{pairKey(string(ix.State), id), nil})
		if ix.State == broker.StateActive {
			expiry = append(expiry, kv{timeKey(ix.ExpiresAt, id), nil})
		}
		if ix.RequestID != "" {
			// Leases come in ID order, oldest first: a later one for the
			// same request overwrites, so the newest owns the key, as
			// Apply keeps it.
			request = append(request, kv{pairKey(ix.Agent, ix.RequestID), []byte(id)})
		}
		after = append(after[:0], k...)
		n++
	}
	for _, w := range []struct {
		b   *bolt.Bucket
		kvs []kv
	}{{b.agent, agent}, {b.task, task}, {b.state, state}, {b.expiry, expiry}, {b.request, request}} {
		// Stable: equal request keys keep their ID order, newest last.
		slices.SortStableFunc(w.kvs, func(x, y kv) int { return bytes.Compare(x.k, y.k) })
		for _, e := range w.kvs {
			if err := w.b.Put(e.k, e.v); err != nil {
				return 0, nil, err
			}
		}
	}
	return n, after, nil
}
