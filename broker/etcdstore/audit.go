package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/latchbroker/latch/broker"
)

// The audit chain lives under <prefix>/audit/: one key per event,
// e/<seq as 16 hex digits> (so that keys sort by sequence, and etcdctl
// shows them readably), and head, the last event's sequence and hash,
// which every append reads in its transaction. Replicas that append at
// once conflict on the head; the loser reads the new head and chains
// after it, so every replica writes one chain in one order.
type chain struct {
	kv     clientv3.KV
	prefix string // <prefix>/audit/
}

func newChain(kv clientv3.KV, prefix string) chain {
	return chain{kv: kv, prefix: prefix + "/audit/"}
}

func (c chain) headKey() string            { return c.prefix + "head" }
func (c chain) eventKey(seq uint64) string { return c.prefix + "e/" + fmt.Sprintf("%016x", seq) }
func (c chain) eventsEnd() string          { return c.prefix + "e0" } // '0' follows '/': past every event key

// headRecord is the head's value: the last event's sequence and hash.
type headRecord struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

// readHead reads the head with get (txn.get in an append, so that its
// commit fails if another writer moves the head); zero when the log is
// empty.
func (c chain) readHead(get getter) (headRecord, error) {
	var h headRecord
	v, err := get(c.headKey())
	if err != nil || v == nil {
		return h, err
	}
	if err := json.Unmarshal(v, &h); err != nil {
		return h, fmt.Errorf("%w: %w: audit head: %v", broker.ErrStoreUnavailable, ErrCorrupt, err)
	}
	return h, nil
}

// appendIn chains events (in place) after the head and writes them and
// the new head in t. An event key that exists already means the head was
// rolled back under a longer log: appending would fork the chain, so
// every write is refused until someone looks.
func (c chain) appendIn(t *txn, events []broker.Event) error {
	if len(events) == 0 {
		return nil
	}
	h, err := c.readHead(t.get)
	if err != nil {
		return err
	}
	var prev *broker.Event
	if h.Seq > 0 {
		prev = &broker.Event{Seq: h.Seq, Hash: h.Hash}
	}
	// The record after the stored head must not exist (read once per
	// transaction: a change after another in the batch chains after a head
	// written here); the others are only compared, a read each would cost
	// a round trip each.
	if _, ours := t.writes[c.headKey()]; !ours {
		if old, err := t.get(c.eventKey(h.Seq + 1)); err != nil {
			return err
		} else if old != nil {
			return fmt.Errorf("%w: %w: audit record %d exists past the audit head %d", broker.ErrStoreUnavailable, ErrCorrupt, h.Seq+1, h.Seq)
		}
	}
	for i := range events {
		e := &events[i]
		e.Chain(prev)
		k := c.eventKey(e.Seq)
		t.absent(k)
		v, err := json.Marshal(e)
		if err != nil {
			return fmt.Errorf("%w: encode event %d: %v", broker.ErrInvalidChange, e.Seq, err)
		}
		t.put(k, v)
		prev = e
	}
	hv, _ := json.Marshal(headRecord{Seq: prev.Seq, Hash: prev.Hash})
	t.put(c.headKey(), hv)
	return nil
}

// errConflict is a transaction that lost a race: read again and retry.
var errConflict = errors.New("etcdstore: conflict")

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
	v := &view{ctx: ctx, kv: c.kv}
	h, err := c.readHead(v.get)
	if err != nil || h.Seq == 0 {
		return nil, err
	}
	b, err := v.get(c.eventKey(h.Seq))
	if err != nil {
		return nil, err
	}
	if b == nil {
		return nil, fmt.Errorf("%w: %w: the audit head names record %d, which is missing", broker.ErrStoreUnavailable, ErrCorrupt, h.Seq)
	}
	var e broker.Event
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("%w: %w: audit record %d: %v", broker.ErrStoreUnavailable, ErrCorrupt, h.Seq, err)
	}
	return &e, nil
}

// Head returns the audit head: the sequence and hash of the last event
// appended (zero when the log is empty). A verifier checks the log
// against it (etcd's head moves with every append, in the same
// transaction).
func (s *Store) Head(ctx context.Context) (seq uint64, hash string, err error) {
	if err := s.ready(); err != nil {
		return 0, "", err
	}
	v := &view{ctx: ctx, kv: s.cli}
	h, err := s.audit.readHead(v.get)
	return h.Seq, h.Hash, err
}
