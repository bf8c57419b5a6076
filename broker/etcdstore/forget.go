package etcdstore

import (
	"context"
	"errors"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/latchbroker/latch/broker"
)

var _ broker.Forgetter = (*Store)(nil)

// forgetPage bounds the leases one transaction of ForgetEnded deletes:
// each takes up to eight keys with its indexes.
const forgetPage = 500

// ForgetEnded implements broker.Forgetter: the leases that ended before
// t, oldest first, from the ended index, each deleted with its index
// entries in transactions of forgetPage, conditional like Apply (a lease
// changed meanwhile is read again), fenced when ctx is (WithFence).
func (s *Store) ForgetEnded(ctx context.Context, before time.Time, limit int) (int, error) {
	if err := s.ready(); err != nil {
		return 0, err
	}
	done := 0
	for limit <= 0 || done < limit {
		page := forgetPage
		if limit > 0 {
			page = min(page, limit-done)
		}
		all := s.k.indexAll(ixEnded)
		res, err := s.cli.Get(ctx, all, clientv3.WithRange(all+notAfter(before)), clientv3.WithKeysOnly(), clientv3.WithLimit(int64(page)))
		if err != nil {
			return done, unavailable("read the ended leases", err)
		}
		if len(res.Kvs) == 0 {
			return done, nil
		}
		var entries []string
		for _, kv := range res.Kvs {
			entries = append(entries, string(kv.Key))
		}
		n, err := s.forget(ctx, all, entries)
		done += n
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// forget deletes the leases of the ended index's entries (under all)
// that are still ended, with their indexes, in one transaction, read
// again while another writer changes what it read.
func (s *Store) forget(ctx context.Context, all string, entries []string) (int, error) {
	ids := make([]string, len(entries))
	keys := make([]string, len(entries))
	for i, e := range entries {
		ids[i] = e[len(all)+16:]
		keys[i] = s.k.lease(ids[i])
	}
	for {
		t := newTxn(ctx, s.cli)
		t.fence = fenceOf(ctx)
		if err := t.prefetch(keys); err != nil {
			return 0, err
		}
		n := 0
		for i, id := range ids {
			v, err := t.get(keys[i])
			if err != nil {
				return 0, err
			}
			if v == nil {
				t.del(entries[i]) // an entry without its lease: nothing to forget
				continue
			}
			old, err := decode[leaseIndex]("lease "+id, v)
			if err != nil {
				return 0, err
			}
			if !old.State.Ended() {
				continue
			}
			if err := s.unindex(t, id, old, &leaseIndex{}); err != nil {
				return 0, err
			}
			t.del(keys[i])
			n++
		}
		err := t.commit()
		if errors.Is(err, errConflict) {
			continue
		}
		if err != nil {
			return 0, err
		}
		return n, nil
	}
}
