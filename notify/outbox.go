package notify

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/latchbroker/latch/broker"
)

var (
	bucketOutbox = []byte("outbox")
	bucketDead   = []byte("dead")
	bucketMeta   = []byte("meta")
	keyCursor    = []byte("cursor")
)

// item is one pending delivery in the outbox.
type item struct {
	URL       string    `json:"url"`
	Delivery  string    `json:"delivery"`
	Type      string    `json:"type"`
	Body      []byte    `json:"body"`
	Attempts  int       `json:"attempts"`
	NextAt    time.Time `json:"next_at"`
	CreatedAt time.Time `json:"created_at"`
	LastError string    `json:"last_error,omitempty"`
	// DeadAt is when a dead letter died; its expiry counts from then.
	DeadAt time.Time `json:"dead_at,omitzero"`
}

// loadCursor returns the last sequence number whose events are all in
// the outbox. On first use it starts at the audit log's end: a new
// webhook is not sent the past. With a Handoff that holds a number, it
// starts after that: where the replica before left off.
func (n *Notifier) loadCursor(ctx context.Context, src Source) (uint64, error) {
	if n.handoff != nil {
		done, ok, err := n.handoff.LoadDone(ctx)
		if err != nil {
			return 0, fmt.Errorf("notify: read where the replica before left off: %w", err)
		}
		if ok {
			return done, n.db.Update(func(tx *bolt.Tx) error { return takeOver(tx, done) })
		}
	}
	var cur uint64
	var found bool
	err := n.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keyCursor); len(v) == 8 {
			cur, found = binary.BigEndian.Uint64(v), true
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("notify: read the outbox cursor: %w", err)
	}
	if found {
		return cur, nil
	}
	last, err := src.LastSeq(ctx)
	if err != nil {
		return 0, fmt.Errorf("notify: read the audit log's end: %w", err)
	}
	err = n.db.Update(func(tx *bolt.Tx) error { return putCursor(tx, last) })
	if err != nil {
		return 0, fmt.Errorf("notify: save the outbox cursor: %w", err)
	}
	return last, nil
}

// takeOver moves the cursor to done, where the replica before left off,
// and drops what this outbox still holds of events up to it, left from
// an earlier turn: the replicas since sent them.
func takeOver(tx *bolt.Tx, done uint64) error {
	end := []byte(fmt.Sprintf("%020d.", done)) // '.' is past '-': every key of seq done
	b := tx.Bucket(bucketOutbox)
	var old [][]byte
	c := b.Cursor()
	for k, _ := c.First(); k != nil && bytes.Compare(k, end) < 0; k, _ = c.Next() {
		old = append(old, bytes.Clone(k))
	}
	for _, k := range old {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return putCursor(tx, done)
}

func putCursor(tx *bolt.Tx, c uint64) error {
	return tx.Bucket(bucketMeta).Put(keyCursor, binary.BigEndian.AppendUint64(nil, c))
}

// enqueue writes one delivery per event and matching webhook and moves
// the cursor to cursor, in one transaction — so a delivery is never
// written twice, nor an event skipped — and wakes the senders of the
// webhooks that got one.
func (n *Notifier) enqueue(events []broker.Event, cursor uint64) error {
	now := n.now()
	var items []item
	got := make([]bool, len(n.hooks)) // which webhooks have new deliveries
	for _, e := range events {
		for i, w := range n.hooks {
			if !slices.Contains(w.Events, string(e.Type)) {
				continue
			}
			got[i] = true
			body, err := render(e, w.Slack, approvalLink(n.console, e))
			if err != nil {
				return err
			}
			items = append(items, item{URL: w.URL, Delivery: deliveryID(e.Seq, w.URL), Type: string(e.Type), Body: body, NextAt: now, CreatedAt: now})
		}
	}
	err := n.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketOutbox)
		for _, it := range items {
			v, err := json.Marshal(it)
			if err != nil {
				return err
			}
			if err := b.Put([]byte(it.Delivery), v); err != nil {
				return err
			}
		}
		return putCursor(tx, cursor)
	})
	if err != nil {
		return err
	}
	for i, wake := range n.wakes {
		if !got[i] {
			continue
		}
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	return nil
}

// deliveryID is the outbox key: the event's sequence number (so the
// outbox sorts by event) and the webhook. The same event for the same
// webhook is one delivery, however often it is enqueued.
func deliveryID(seq uint64, u string) string {
	sum := sha256.Sum256([]byte(u))
	return fmt.Sprintf("%020d-%s", seq, hex.EncodeToString(sum[:6]))
}

// outbox returns the outbox items keep selects, in event order.
func (n *Notifier) outbox(keep func(item) bool) ([]item, error) {
	var out []item
	err := n.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketOutbox).ForEach(func(_, v []byte) error {
			var it item
			if err := json.Unmarshal(v, &it); err != nil {
				return err
			}
			if keep(it) {
				out = append(out, it)
			}
			return nil
		})
	})
	return out, err
}

// pruneEvery is how often expired dead letters are looked for after
// Run's start: each look reads every dead letter, and an hour late is
// nothing against a TTL of days.
const pruneEvery = time.Hour

// reportLoop reports the outbox's depth every poll, saves how far every
// delivery is done to the Handoff, and deletes expired dead letters every
// pruneEvery, until ctx ends.
func (n *Notifier) reportLoop(ctx context.Context, saved uint64) {
	tick := time.NewTicker(n.poll)
	defer tick.Stop()
	pruned := n.now() // Run has just pruned
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			n.reportOutbox()
			saved = n.handOff(ctx, saved)
			if now := n.now(); now.Sub(pruned) >= pruneEvery {
				n.pruneDead()
				pruned = now
			}
		}
	}
}

// pruneDead deletes the dead letters that died DeadLetterTTL ago or
// more. A letter written by an older latch, without DeadAt, counts from
// when it was created: earlier than it died, so it goes no later than
// it should.
func (n *Notifier) pruneDead() {
	cutoff := n.now().Add(-n.deadTTL)
	var expired int
	err := n.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDead)
		var keys [][]byte
		err := b.ForEach(func(k, v []byte) error {
			var it item
			if err := json.Unmarshal(v, &it); err != nil {
				// Its age is unknown: kept, and the others still expire.
				n.log.Error("read a webhook dead letter", "delivery", string(k), "err", err)
				return nil
			}
			died := it.DeadAt
			if died.IsZero() {
				died = it.CreatedAt
			}
			if !died.After(cutoff) {
				keys = append(keys, bytes.Clone(k)) // a copy: the bucket changes under k
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range keys {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		expired = len(keys)
		return nil
	})
	if err != nil {
		n.log.Error("delete expired webhook dead letters", "err", err)
		return
	}
	if expired > 0 {
		n.log.Info("deleted expired webhook dead letters", "count", expired, "ttl", n.deadTTL)
	}
}

// reportOutbox reports the outbox's depth to the metrics.
func (n *Notifier) reportOutbox() {
	var depth int
	if err := n.db.View(func(tx *bolt.Tx) error {
		depth = tx.Bucket(bucketOutbox).Stats().KeyN
		return nil
	}); err == nil {
		n.metrics.WebhookOutbox(depth)
	}
}

// dropUnconfigured moves the deliveries to webhooks no longer configured
// to the dead-letter bucket.
func (n *Notifier) dropUnconfigured() {
	items, err := n.outbox(func(it item) bool { _, ok := n.hook(it.URL); return !ok })
	if err != nil {
		n.log.Error("read the webhook outbox", "err", err)
		return
	}
	for _, it := range items {
		n.log.Warn("dropping a delivery to a webhook no longer configured", "url", redactURL(it.URL), "delivery", it.Delivery)
		n.finish(it, false)
		n.metrics.WebhookDelivery(ResultDropped)
	}
}

func (n *Notifier) put(bucket []byte, it item) error {
	v, err := json.Marshal(it)
	if err != nil {
		return err
	}
	return n.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put([]byte(it.Delivery), v) })
}

// finish removes a delivery from the outbox; one that was not delivered
// is kept in the dead-letter bucket, until DeadLetterTTL has passed.
func (n *Notifier) finish(it item, delivered bool) {
	err := n.db.Update(func(tx *bolt.Tx) error {
		if !delivered {
			it.DeadAt = n.now()
			v, err := json.Marshal(it)
			if err != nil {
				return err
			}
			if err := tx.Bucket(bucketDead).Put([]byte(it.Delivery), v); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketOutbox).Delete([]byte(it.Delivery))
	})
	if err != nil {
		n.log.Error("update the webhook outbox", "delivery", it.Delivery, "err", err)
	}
}

// handOff saves to the Handoff how far every delivery is done, when it
// moved past saved, and returns what is saved.
func (n *Notifier) handOff(ctx context.Context, saved uint64) uint64 {
	if n.handoff == nil {
		return saved
	}
	done, err := n.doneThrough()
	if err != nil {
		n.log.Error("read the webhook outbox", "err", err)
		return saved
	}
	if done == saved {
		return saved
	}
	if err := n.handoff.SaveDone(ctx, done); err != nil {
		n.log.Warn("save where the webhook outbox is for the next replica", "err", err)
		return saved
	}
	return done
}

// doneThrough is the sequence number up to which every delivery is done:
// the one before the oldest still in the outbox (keys start with the
// event's sequence number), or the cursor when it is empty.
func (n *Notifier) doneThrough() (uint64, error) {
	var done uint64
	err := n.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keyCursor); len(v) == 8 {
			done = binary.BigEndian.Uint64(v)
		}
		k, _ := tx.Bucket(bucketOutbox).Cursor().First()
		if k == nil {
			return nil
		}
		seq, err := strconv.ParseUint(string(k[:min(len(k), 20)]), 10, 64)
		if err != nil || seq == 0 {
			return fmt.Errorf("outbox key %q", k)
		}
		done = min(done, seq-1)
		return nil
	})
	return done, err
}
