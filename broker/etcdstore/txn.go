package etcdstore

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/latchbroker/latch/broker"
)

// txn is one optimistic transaction: reads at one revision, writes
// buffered, and a commit that succeeds only if nothing it read has
// changed since. Every key it got is compared on its ModRevision (or
// CreateRevision 0 when it was absent), every range it scanned on the
// newest ModRevision in the range, so a key created in a scanned range
// makes the commit fail too. Reads see the transaction's own writes, so
// changes committed together each see those before them.
type txn struct {
	ctx   context.Context
	kv    clientv3.KV
	rev   int64 // the revision every read is at; 0 until the first read
	cmps  []clientv3.Cmp
	fence *Fence // the batch's: see Fence
	seen  map[string]bool
	blind bool // reads see only its own writes: an import into an empty prefix
	bytes int  // of the keys and values put, rewrites counted again: a bound

	cache  map[string]*mvccpb.KeyValue // prefetched keys; nil: absent
	writes map[string]*string          // nil value: delete
}

func newTxn(ctx context.Context, kv clientv3.KV) *txn {
	return &txn{ctx: ctx, kv: kv, seen: map[string]bool{}, cache: map[string]*mvccpb.KeyValue{}, writes: map[string]*string{}}
}

// at adds the revision option once the first read fixed it.
func (t *txn) at(opts ...clientv3.OpOption) []clientv3.OpOption {
	if t.rev > 0 {
		opts = append(opts, clientv3.WithRev(t.rev))
	}
	return opts
}

func (t *txn) read(key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	res, err := t.kv.Get(t.ctx, key, t.at(opts...)...)
	if err != nil {
		return nil, unavailable("read "+key, err)
	}
	if t.rev == 0 {
		t.rev = res.Header.Revision
	}
	return res, nil
}

// prefetch reads keys in one request (a transaction of gets), so that the
// gets of a batch of changes cost one round trip, not one each.
func (t *txn) prefetch(keys []string) error {
	var ops []clientv3.Op
	for _, k := range keys {
		if _, done := t.cache[k]; !done {
			ops = append(ops, clientv3.OpGet(k, t.at()...))
			t.cache[k] = nil
		}
	}
	for len(ops) > 0 {
		n := min(len(ops), maxBatchOps)
		res, err := t.kv.Txn(t.ctx).Then(ops[:n]...).Commit()
		if err != nil {
			return unavailable("read", err)
		}
		if t.rev == 0 {
			t.rev = res.Header.Revision
		}
		for _, r := range res.Responses {
			for _, kv := range r.GetResponseRange().Kvs {
				t.cache[string(kv.Key)] = kv
			}
		}
		ops = ops[n:]
		for i := range ops { // later chunks read at the first one's revision
			ops[i] = clientv3.OpGet(string(ops[i].KeyBytes()), clientv3.WithRev(t.rev))
		}
	}
	return nil
}

// get returns key's value, the transaction's own write first.
func (t *txn) get(key string) ([]byte, error) {
	if v, ok := t.writes[key]; ok {
		if v == nil {
			return nil, nil
		}
		return []byte(*v), nil
	}
	if t.blind {
		return nil, nil
	}
	kv, cached := t.cache[key]
	if !cached {
		res, err := t.read(key)
		if err != nil {
			return nil, err
		}
		if len(res.Kvs) > 0 {
			kv = res.Kvs[0]
		}
		t.cache[key] = kv
	}
	if !t.seen[key] {
		t.seen[key] = true
		if kv == nil {
			t.cmps = append(t.cmps, clientv3.Compare(clientv3.CreateRevision(key), "=", 0))
		} else {
			t.cmps = append(t.cmps, clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision))
		}
	}
	if kv == nil {
		return nil, nil
	}
	return kv.Value, nil
}

// absent makes the commit fail if key exists, without reading it.
func (t *txn) absent(key string) {
	if !t.seen[key] {
		t.seen[key] = true
		t.cmps = append(t.cmps, clientv3.Compare(clientv3.CreateRevision(key), "=", 0))
	}
}

// scan calls fn for each key with prefix, in order, the transaction's
// own writes included.
func (t *txn) scan(prefix string, fn func(k string, v []byte)) error {
	end := clientv3.GetPrefixRangeEnd(prefix)
	res, err := t.read(prefix, clientv3.WithRange(end))
	if err != nil {
		return err
	}
	t.cmps = append(t.cmps, clientv3.Compare(clientv3.ModRevision(prefix).WithRange(end), "<", t.rev+1))
	merged := map[string][]byte{}
	for _, kv := range res.Kvs {
		merged[string(kv.Key)] = kv.Value
	}
	for k, v := range t.writes {
		switch {
		case !strings.HasPrefix(k, prefix):
		case v == nil:
			delete(merged, k)
		default:
			merged[k] = []byte(*v)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(merged)) {
		fn(k, merged[k])
	}
	return nil
}

func (t *txn) put(key string, v []byte) {
	s := string(v)
	t.writes[key] = &s
	t.bytes += len(key) + len(s)
}

func (t *txn) del(key string) { t.writes[key] = nil }

// savepoint returns what restore needs to undo the writes made after it.
func (t *txn) savepoint() map[string]*string { return maps.Clone(t.writes) }

// restore drops the writes made since sp. The reads stay compared: a
// change that failed a condition failed on what they read.
func (t *txn) restore(sp map[string]*string) { t.writes = sp }

// full reports whether the commit would pass maxBatchOps or maxBatchBytes.
func (t *txn) full() bool { return t.size() > maxBatchOps || t.bytes > maxBatchBytes }

// size is how many operations the commit would send.
func (t *txn) size() int { return max(len(t.writes), len(t.cmps)) }

// empty reports whether the transaction would write nothing.
func (t *txn) empty() bool { return len(t.writes) == 0 }

// commit writes everything if nothing read has changed and the fence
// holds: errConflict when something changed, ErrFenced when the fence
// failed (asked again in the same request, so the two are told apart).
func (t *txn) commit() error {
	keys := make([]string, 0, len(t.writes))
	for k := range t.writes {
		keys = append(keys, k)
	}
	sort.Strings(keys) // the same change gives the same request
	ops := make([]clientv3.Op, 0, len(keys))
	for _, k := range keys {
		if v := t.writes[k]; v != nil {
			ops = append(ops, clientv3.OpPut(k, *v))
		} else {
			ops = append(ops, clientv3.OpDelete(k))
		}
	}
	txn := t.kv.Txn(t.ctx).If(t.cmps...).Then(ops...)
	if t.fence != nil {
		txn = t.kv.Txn(t.ctx).If(append(t.cmps, t.fence.Cmp)...).Then(ops...).Else(clientv3.OpTxn([]clientv3.Cmp{t.fence.Cmp}, nil, nil))
	}
	res, err := txn.Commit()
	switch {
	case err != nil:
		return unavailable("commit", err)
	case res.Succeeded:
		return nil
	case t.fence != nil && !res.Responses[0].GetResponseTxn().Succeeded:
		return fmt.Errorf("etcdstore: commit: %w: %w", broker.ErrStoreUnavailable, ErrFenced)
	}
	return errConflict
}
