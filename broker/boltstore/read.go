package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/latchbroker/latch/broker"
)

// checkEvery is how many records a long scan walks between looks at its
// context.
const checkEvery = 1024

// recordKind says where a lease or an approval is kept: the bucket that
// holds it by ID, the index from (agent, request ID) to its ID, and the
// error that says there is none.
type recordKind struct {
	name      string
	bucket    []byte
	byRequest []byte
	notFound  error
}

var (
	leaseRecords    = recordKind{"lease", bktLeases, bktIdxRequest, broker.ErrLeaseNotFound}
	approvalRecords = recordKind{"approval", bktApprovals, bktIdxApprovalRequest, broker.ErrApprovalNotFound}
)

// decode reads one JSON record; one that does not decode is ErrCorrupt,
// named by what.
func decode[T any](what string, v []byte) (*T, error) {
	r := new(T)
	if err := json.Unmarshal(v, r); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, what, err)
	}
	return r, nil
}

// get reads the record id of kind k.
func get[T any](ctx context.Context, s *Store, k recordKind, id string) (*T, error) {
	var r *T
	err := s.view(ctx, k.name+" "+id, func(tx *bolt.Tx) error {
		v := tx.Bucket(k.bucket).Get([]byte(id))
		if v == nil {
			return k.notFound
		}
		var err error
		r, err = decode[T](k.name+" "+id, v)
		return err
	})
	return r, err
}

// byRequest reads the newest record of kind k that the agent's request
// ID produced.
func byRequest[T any](ctx context.Context, s *Store, k recordKind, agent, requestID string) (*T, error) {
	var r *T
	err := s.view(ctx, k.name+" by request", func(tx *bolt.Tx) error {
		id := tx.Bucket(k.byRequest).Get(pairKey(agent, requestID))
		if id == nil {
			return k.notFound
		}
		v := tx.Bucket(k.bucket).Get(id)
		if v == nil {
			return fmt.Errorf("%w: request index names %s %s, which does not exist", ErrCorrupt, k.name, id)
		}
		var err error
		r, err = decode[T](k.name+" "+string(id), v)
		return err
	})
	return r, err
}

// expiring walks idx, a deadline index (keys: 8-byte time, then the
// record's ID), soonest first, and returns the records of kind k due
// before t that keep says are still live, at most limit (no bound when
// limit ≤ 0).
func expiring[T any](ctx context.Context, s *Store, k recordKind, idx []byte, t time.Time, limit int, keep func(*T) bool) ([]*T, error) {
	out := []*T{}
	end := timeOrd(t)
	err := s.view(ctx, k.name+"s expiring", func(tx *bolt.Tx) error {
		records := tx.Bucket(k.bucket)
		c := tx.Bucket(idx).Cursor()
		for key, _ := c.First(); key != nil && (limit <= 0 || len(out) < limit); key, _ = c.Next() {
			if len(key) < 8 {
				return fmt.Errorf("%w: %s deadline index key %x", ErrCorrupt, k.name, key)
			}
			if binary.BigEndian.Uint64(key) >= end {
				break
			}
			id := key[8:]
			v := records.Get(id)
			if v == nil {
				return fmt.Errorf("%w: deadline index names %s %s, which does not exist", ErrCorrupt, k.name, id)
			}
			r, err := decode[T](k.name+" "+string(id), v)
			if err != nil {
				return err
			}
			if keep(r) {
				out = append(out, r)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Lease returns one lease; broker.ErrLeaseNotFound when there is none.
func (s *Store) Lease(ctx context.Context, id string) (*broker.Lease, error) {
	return get[broker.Lease](ctx, s, leaseRecords, id)
}

// LeaseByRequest returns the newest lease that the agent's request ID
// produced; broker.ErrLeaseNotFound when there is none. Intents are not
// found here: a request still minting is guarded by the Service in memory,
// and one interrupted by a crash is finished by reconciliation.
func (s *Store) LeaseByRequest(ctx context.Context, agent, requestID string) (*broker.Lease, error) {
	return byRequest[broker.Lease](ctx, s, leaseRecords, agent, requestID)
}

// Leases returns the leases that match f, newest first, at most f.Limit.
// It walks the agent index when f names an agent, else the task index,
// else the state index, else all leases; the agent and task indexes hold
// each lease's state, so dead leases are skipped without being decoded.
// Memory grows with the result, not with the store.
//
// A long listing is read in several short transactions, each ending after
// listPage keys, because a writer that must grow the file's mapping waits
// for every open read transaction: one long listing could stall issuance.
// So a lease that changes state during the listing may be missed; none is
// listed twice, since each transaction resumes below the last lease ID.
func (s *Store) Leases(ctx context.Context, f broker.LeaseFilter) ([]*broker.Lease, error) {
	out := []*broker.Lease{}
	if f.State != "" && f.LiveOnly && !f.State.Live() {
		return out, nil
	}
	var before []byte
	for {
		done := false
		err := s.view(ctx, "list leases", func(tx *bolt.Tx) error {
			var err error
			done, before, err = listLeases(ctx, tx, f, before, &out)
			return err
		})
		if err != nil {
			return nil, err
		}
		if done {
			return out, nil
		}
	}
}

// listPage is how many keys one transaction of Leases walks: about 40 ms of
// decoding at worst on a slow machine.
var listPage = 4096

// listLeases walks up to listPage keys of the index that suits f, from the
// lease ID before down, appending matches to out. It returns whether the
// listing is complete, and otherwise the lease ID to resume below.
func listLeases(ctx context.Context, tx *bolt.Tx, f broker.LeaseFilter, before []byte, out *[]*broker.Lease) (bool, []byte, error) {
	leases := tx.Bucket(bktLeases)
	var its []*prefixIter
	check, inline := false, false // values are states to check; values are the leases
	switch {
	case f.Agent != "":
		its, check = []*prefixIter{newPrefixIter(tx.Bucket(bktIdxAgent).Cursor(), prefixKey(f.Agent), before)}, true
	case f.Task != "":
		its, check = []*prefixIter{newPrefixIter(tx.Bucket(bktIdxTask).Cursor(), prefixKey(f.Task), before)}, true
	case f.State != "":
		its = []*prefixIter{newPrefixIter(tx.Bucket(bktIdxState).Cursor(), prefixKey(string(f.State)), before)}
	case f.LiveOnly:
		for _, st := range []broker.LeaseState{broker.StatePending, broker.StateActive, broker.StateRevoking, broker.StateIrrevocable} {
			its = append(its, newPrefixIter(tx.Bucket(bktIdxState).Cursor(), prefixKey(string(st)), before))
		}
	default:
		its, inline = []*prefixIter{newPrefixIter(leases.Cursor(), nil, before)}, true
	}
	stateOK := func(st []byte) bool {
		return (f.State == "" || string(st) == string(f.State)) &&
			(!f.LiveOnly || broker.LeaseState(st).Live())
	}

	// Merge the iterators newest first: each walks lease IDs backwards,
	// so the largest current ID is the next newest.
	var last []byte // the lease ID walked last: a resumed listing goes on below it
	for n := 0; ; n++ {
		var top *prefixIter
		for _, it := range its {
			if id := it.id(); id != nil && (top == nil || bytes.Compare(id, top.id()) > 0) {
				top = it
			}
		}
		if top == nil {
			return true, nil, nil
		}
		if n == listPage {
			return false, bytes.Clone(last), nil
		}
		id := top.id()
		if n%checkEvery == checkEvery-1 {
			if err := ctx.Err(); err != nil {
				return false, nil, err
			}
		}
		if !check || stateOK(top.v) {
			v := top.v
			if !inline {
				if v = leases.Get(id); v == nil {
					return false, nil, fmt.Errorf("%w: an index names lease %s, which does not exist", ErrCorrupt, id)
				}
			}
			l, err := decode[broker.Lease]("lease "+string(id), v)
			if err != nil {
				return false, nil, err
			}
			if f.Match(l) {
				*out = append(*out, l)
				if f.Limit > 0 && len(*out) >= f.Limit {
					return true, nil, nil
				}
			}
		}
		last = id
		top.next()
	}
}

// ExpiringBefore returns active leases whose ExpiresAt is before t, soonest
// first, at most limit (no bound when limit ≤ 0).
func (s *Store) ExpiringBefore(ctx context.Context, t time.Time, limit int) ([]*broker.Lease, error) {
	return expiring(ctx, s, leaseRecords, bktIdxExpiry, t, limit, func(l *broker.Lease) bool { return l.State == broker.StateActive })
}

// Intents returns every stored intent, oldest first.
func (s *Store) Intents(ctx context.Context) ([]*broker.Lease, error) {
	out := []*broker.Lease{}
	err := s.view(ctx, "list intents", func(tx *bolt.Tx) error {
		return tx.Bucket(bktIntents).ForEach(func(k, v []byte) error {
			l, err := decode[broker.Lease]("intent "+string(k), v)
			if err != nil {
				return err
			}
			out = append(out, l)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// DueRevocations returns queued revocations whose NextAttempt is not after
// now, earliest first, at most limit (no bound when limit ≤ 0).
func (s *Store) DueRevocations(ctx context.Context, now time.Time, limit int) ([]broker.Revocation, error) {
	out := []broker.Revocation{}
	end := timeOrd(now)
	err := s.view(ctx, "due revocations", func(tx *bolt.Tx) error {
		revs := tx.Bucket(bktRevocations)
		c := tx.Bucket(bktIdxDue).Cursor()
		for k, _ := c.First(); k != nil && (limit <= 0 || len(out) < limit); k, _ = c.Next() {
			if len(k) < 8 {
				return fmt.Errorf("%w: due index key %x", ErrCorrupt, k)
			}
			if binary.BigEndian.Uint64(k) > end {
				break
			}
			id := k[8:]
			v := revs.Get(id)
			if v == nil {
				return fmt.Errorf("%w: due index names revocation %s, which does not exist", ErrCorrupt, id)
			}
			var r broker.Revocation
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("%w: revocation %s: %v", ErrCorrupt, id, err)
			}
			out = append(out, r)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// QueueDepth is the number of queued revocations.
func (s *Store) QueueDepth(ctx context.Context) (int, error) {
	var n int
	err := s.view(ctx, "queue depth", func(tx *bolt.Tx) error {
		// Stats sums key counts page by page: no record is decoded.
		n = tx.Bucket(bktRevocations).Stats().KeyN
		return nil
	})
	return n, err
}

// Agent returns the stored record of one agent, or a record with only ID
// and State broker.AgentActive when latch has none.
func (s *Store) Agent(ctx context.Context, id string) (broker.AgentRecord, error) {
	rec := broker.AgentRecord{ID: id, State: broker.AgentActive}
	err := s.view(ctx, "agent "+id, func(tx *bolt.Tx) error {
		v := tx.Bucket(bktAgents).Get([]byte(id))
		if v == nil {
			return nil
		}
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("%w: agent %s: %v", ErrCorrupt, id, err)
		}
		return nil
	})
	return rec, err
}

// Agents returns every agent record, by ID.
func (s *Store) Agents(ctx context.Context) ([]broker.AgentRecord, error) {
	out := []broker.AgentRecord{}
	err := s.view(ctx, "list agents", func(tx *bolt.Tx) error {
		return tx.Bucket(bktAgents).ForEach(func(k, v []byte) error {
			var rec broker.AgentRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("%w: agent %s: %v", ErrCorrupt, k, err)
			}
			out = append(out, rec)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// CountByTask counts the leases in state by task from the task index,
// whose values are the leases' states: no lease is decoded, and keys are
// compared in place, so the count allocates per task, not per lease.
func (s *Store) CountByTask(ctx context.Context, state broker.LeaseState) (map[string]int, error) {
	out := map[string]int{}
	st := []byte(state)
	err := s.view(ctx, "count leases by task", func(tx *bolt.Tx) error {
		var task []byte // the task of the keys being counted
		n := 0
		flush := func() {
			if n > 0 {
				out[string(task)] += n
			}
			n = 0
		}
		c := tx.Bucket(bktIdxTask).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			i := bytes.IndexByte(k, sep)
			if i < 0 {
				return fmt.Errorf("%w: task index key %q has no separator", ErrCorrupt, k)
			}
			if !bytes.Equal(k[:i], task) {
				flush()
				task = append(task[:0], k[:i]...)
			}
			if bytes.Equal(v, st) {
				n++
			}
		}
		flush()
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Grants returns the recorded grants; none when never recorded.
func (s *Store) Grants(ctx context.Context) ([]broker.Grant, error) {
	var out []broker.Grant
	err := s.view(ctx, "grants", func(tx *bolt.Tx) error {
		v := tx.Bucket(bktMeta).Get(keyGrants)
		if v == nil {
			return nil
		}
		if err := json.Unmarshal(v, &out); err != nil {
			return fmt.Errorf("%w: grants: %v", ErrCorrupt, err)
		}
		return nil
	})
	return out, err
}

// Freeze returns the global freeze; inactive when never set.
func (s *Store) Freeze(ctx context.Context) (broker.FreezeState, error) {
	var fs broker.FreezeState
	err := s.view(ctx, "freeze", func(tx *bolt.Tx) error {
		v := tx.Bucket(bktFreeze).Get(keyFreeze)
		if v == nil {
			return nil
		}
		if err := json.Unmarshal(v, &fs); err != nil {
			return fmt.Errorf("%w: freeze: %v", ErrCorrupt, err)
		}
		return nil
	})
	return fs, err
}
