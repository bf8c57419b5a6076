package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/latchbroker/latch/broker"
)

// The audit chain lives under <prefix>/audit/: one key per event,
// e/<seq as 16 hex digits> (so that keys sort by sequence, and etcdctl
// shows them readably), and head, the last event's sequence and hash,
// which every append compares and swaps. Replicas that append at once
// conflict on the head; the loser reads the new head and chains after
// it, so every replica writes one chain in one order.
type chain struct {
	kv        clientv3.KV
	prefix    string        // <prefix>/audit/
	conflicts *atomic.Int64 // appends that lost the head to another writer
}

func newChain(kv clientv3.KV, prefix string) chain {
	return chain{kv: kv, prefix: prefix + "/audit/", conflicts: new(atomic.Int64)}
}

func (c chain) headKey() string            { return c.prefix + "head" }
func (c chain) eventKey(seq uint64) string { return c.prefix + "e/" + fmt.Sprintf("%016x", seq) }
func (c chain) eventsEnd() string          { return c.prefix + "e0" } // '0' follows '/': past every event key

// head is where the next event chains from, with the compare that holds
// while nobody has moved it.
type head struct {
	seq  uint64
	hash string
	same clientv3.Cmp
}

// headRecord is the head's value.
type headRecord struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

// readHead reads the head as of the latest revision.
func (c chain) readHead(ctx context.Context) (head, error) {
	res, err := c.kv.Get(ctx, c.headKey())
	if err != nil {
		return head{}, unavailable("read the audit head", err)
	}
	if len(res.Kvs) == 0 {
		return head{same: clientv3.Compare(clientv3.CreateRevision(c.headKey()), "=", 0)}, nil
	}
	kv := res.Kvs[0]
	var r headRecord
	if err := json.Unmarshal(kv.Value, &r); err != nil {
		return head{}, fmt.Errorf("%w: %w: audit head: %v", broker.ErrStoreUnavailable, ErrCorrupt, err)
	}
	return head{seq: r.Seq, hash: r.Hash, same: clientv3.Compare(clientv3.ModRevision(c.headKey()), "=", kv.ModRevision)}, nil
}

// chainOps chains events (in place) after h and returns the puts that
// store them and move the head. An event key must not exist yet: one that
// does means the head was rolled back under a longer log, and appending
// would fork the chain (the compares make the transaction fail, and
// append reports it).
func (c chain) chainOps(h head, events []broker.Event) ([]clientv3.Op, []clientv3.Cmp, error) {
	if len(events) == 0 {
		return nil, nil, nil
	}
	var prev *broker.Event
	if h.seq > 0 {
		prev = &broker.Event{Seq: h.seq, Hash: h.hash}
	}
	ops := make([]clientv3.Op, 0, len(events)+1)
	cmps := []clientv3.Cmp{h.same}
	for i := range events {
		e := &events[i]
		e.Chain(prev)
		v, err := json.Marshal(e)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: encode event %d: %v", broker.ErrInvalidChange, e.Seq, err)
		}
		k := c.eventKey(e.Seq)
		ops = append(ops, clientv3.OpPut(k, string(v)))
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
		prev = e
	}
	hv, _ := json.Marshal(headRecord{Seq: prev.Seq, Hash: prev.Hash})
	return append(ops, clientv3.OpPut(c.headKey(), string(hv))), cmps, nil
}

// errConflict is a transaction that lost a race: read again and retry.
var errConflict = errors.New("etcdstore: conflict")

// append chains events after the head and stores them in one transaction,
// retrying when another writer moved the head first; it returns the
// events as stored.
func (c chain) append(ctx context.Context, events []broker.Event) ([]broker.Event, error) {
	for {
		h, err := c.readHead(ctx)
		if err != nil {
			return nil, err
		}
		out := append([]broker.Event(nil), events...)
		ops, cmps, err := c.chainOps(h, out)
		if err != nil {
			return nil, err
		}
		err = c.commit(ctx, cmps, ops)
		switch {
		case errors.Is(err, errConflict) && c.forked(ctx, h):
			return nil, fmt.Errorf("%w: %w: audit records exist past the audit head %d", broker.ErrStoreUnavailable, ErrCorrupt, h.seq)
		case errors.Is(err, errConflict):
			c.conflicts.Add(1)
			continue
		case err != nil:
			return nil, err
		}
		return out, nil
	}
}

// forked reports whether the event after h exists while h is still the
// head: the head was rolled back, not moved by another writer.
func (c chain) forked(ctx context.Context, h head) bool {
	res, err := c.kv.Txn(ctx).If(h.same).Then(clientv3.OpGet(c.eventKey(h.seq+1), clientv3.WithCountOnly())).Commit()
	return err == nil && res.Succeeded && res.Responses[0].GetResponseRange().Count > 0
}

// commit runs ops if every compare holds: errConflict when one does not.
func (c chain) commit(ctx context.Context, cmps []clientv3.Cmp, ops []clientv3.Op) error {
	res, err := c.kv.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return unavailable("commit", err)
	}
	if !res.Succeeded {
		return errConflict
	}
	return nil
}

// eventPage is how many events one read of the log returns.
const eventPage = 256

// events calls fn for each event with Seq > after, in order, until fn
// returns false or an error. Pages are read at the revision of the first,
// so the walk sees one state of the log.
func (c chain) events(ctx context.Context, after uint64, fn func(broker.Event) (bool, error)) error {
	if after == ^uint64(0) {
		return nil
	}
	from := c.eventKey(after + 1)
	var rev int64
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(c.eventsEnd()), clientv3.WithLimit(eventPage)}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		res, err := c.kv.Get(ctx, from, opts...)
		if err != nil {
			return unavailable("read the audit log", err)
		}
		rev = res.Header.Revision
		for _, kv := range res.Kvs {
			var e broker.Event
			if err := json.Unmarshal(kv.Value, &e); err != nil {
				return fmt.Errorf("%w: %w: audit record %s: %v", broker.ErrStoreUnavailable, ErrCorrupt, kv.Key, err)
			}
			more, err := fn(e)
			if err != nil || !more {
				return err
			}
		}
		if !res.More {
			return nil
		}
		from = string(res.Kvs[len(res.Kvs)-1].Key) + "\x00"
	}
}

// last returns the newest event, nil when there is none.
func (c chain) last(ctx context.Context) (*broker.Event, error) {
	h, err := c.readHead(ctx)
	if err != nil || h.seq == 0 {
		return nil, err
	}
	res, err := c.kv.Get(ctx, c.eventKey(h.seq))
	if err != nil {
		return nil, unavailable("read the last audit record", err)
	}
	if len(res.Kvs) == 0 {
		return nil, fmt.Errorf("%w: %w: the audit head names record %d, which is missing", broker.ErrStoreUnavailable, ErrCorrupt, h.seq)
	}
	var e broker.Event
	if err := json.Unmarshal(res.Kvs[0].Value, &e); err != nil {
		return nil, fmt.Errorf("%w: %w: audit record %d: %v", broker.ErrStoreUnavailable, ErrCorrupt, h.seq, err)
	}
	return &e, nil
}
