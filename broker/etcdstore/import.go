package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/latchbroker/latch/broker"
)

// Snapshot is what a store holds beside its audit log, for Import.
type Snapshot struct {
	Leases    []*broker.Lease
	Intents   []*broker.Lease
	Queue     []broker.Revocation
	Agents    []broker.AgentRecord
	Freeze    broker.FreezeState
	Approvals []*broker.Approval
	Grants    []broker.Grant
	Deleting  []string // shared policies marked deleting
	Retired   []broker.RetiredGroup
}

// Imported is what Import wrote.
type Imported struct {
	Leases, Intents, Revocations, Agents, Approvals int
	Events                                          uint64
}

// ErrNotEmpty means Import found the prefix in use.
var ErrNotEmpty = errors.New("the etcd prefix is not empty")

// migratingKey marks a prefix an Import is writing: a server does not
// serve from it (Migrating) until the mark is gone, which Import deletes
// last.
func (k keys) migrating() string { return k.p + "migrating" }

// Import copies snap and the audit log into an empty prefix, as this
// store writes them (records and their indexes), in transactions of at
// most maxBatchOps, and events records, in Seq order from record 1,
// keeping their sequence numbers and hashes, so that the chain (and every
// checkpoint of it) verifies as before. A prefix with any key in it is
// refused (ErrNotEmpty). Until it returns the prefix is marked migrating;
// if it fails part way, delete the prefix (etcdctl del --prefix) and run
// it again.
func (s *Store) Import(ctx context.Context, snap Snapshot, events func(func(broker.Event) error) error) (Imported, error) {
	var n Imported
	if err := s.claimEmpty(ctx); err != nil {
		return n, err
	}
	im := &importer{s: s, ctx: ctx}
	if err := im.records(snap); err != nil {
		return n, err
	}
	var last *broker.Event
	err := events(func(e broker.Event) error {
		switch {
		case last == nil && e.Seq > 1:
			// A pruned log: its anchor is the record before the first.
			anchor := headRecord{Seq: e.Seq - 1, Hash: e.PrevHash}
			if err := im.add(func(t *txn) error { return putJSON(t, s.audit.anchorKey(), "audit anchor", anchor) }); err != nil {
				return err
			}
		case last != nil && e.Seq != last.Seq+1:
			return fmt.Errorf("etcdstore: import: audit record %d follows record %d", e.Seq, last.Seq)
		}
		ev := e
		last = &ev
		return im.add(func(t *txn) error { return putJSON(t, s.audit.eventKey(ev.Seq), "event", ev) })
	})
	if err == nil && last != nil {
		err = im.add(func(t *txn) error {
			return putJSON(t, s.audit.headKey(), "audit head", headRecord{Seq: last.Seq, Hash: last.Hash})
		})
	}
	if err == nil {
		err = im.flush()
	}
	if err != nil {
		return n, err
	}
	if _, err := s.cli.Delete(ctx, s.k.migrating()); err != nil {
		return n, unavailable("import: end", err)
	}
	n = Imported{Leases: len(snap.Leases), Intents: len(snap.Intents), Revocations: len(snap.Queue), Agents: len(snap.Agents), Approvals: len(snap.Approvals)}
	if last != nil {
		n.Events = last.Seq
	}
	return n, nil
}

// records writes snap: every record with its index entries.
func (im *importer) records(snap Snapshot) error {
	s := im.s
	var err error
	add := func(write func(*txn) error) {
		if err == nil {
			err = im.add(write)
		}
	}
	// Oldest first: a request index then points at a request's newest
	// record, as putNewest keeps it.
	slices.SortFunc(snap.Leases, func(a, b *broker.Lease) int { return strings.Compare(a.ID, b.ID) })
	slices.SortFunc(snap.Approvals, func(a, b *broker.Approval) int { return strings.Compare(a.ID, b.ID) })
	for _, l := range snap.Leases {
		add(func(t *txn) error { return s.writeLeases(t, []*broker.Lease{l}) })
	}
	for _, l := range snap.Intents {
		add(func(t *txn) error { return s.writeIntents(t, &broker.Change{PutIntents: []*broker.Lease{l}}) })
	}
	for _, r := range snap.Queue {
		add(func(t *txn) error { return s.writeQueue(t, &broker.Change{Enqueue: []broker.Revocation{r}}) })
	}
	for _, a := range snap.Agents {
		add(func(t *txn) error { return putJSON(t, s.k.agent(a.ID), "agent "+a.ID, a) })
	}
	for _, a := range snap.Approvals {
		add(func(t *txn) error { return s.writeApprovals(t, []*broker.Approval{a}) })
	}
	add(func(t *txn) error {
		return s.writeRecords(t, &broker.Change{Freeze: &snap.Freeze, Grants: snap.Grants})
	})
	for _, p := range snap.Deleting {
		add(func(t *txn) error { t.put(s.k.deleting(p), []byte{1}); return nil })
	}
	for _, g := range snap.Retired {
		add(func(t *txn) error {
			return putJSON(t, s.k.retired(g.Group), "group "+g.Group, retiredMark{Backend: g.Backend, At: g.At.UTC()})
		})
	}
	return err
}

// claimEmpty marks the prefix migrating if it holds no key at all.
func (s *Store) claimEmpty(ctx context.Context) error {
	prefix := s.k.p
	res, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(prefix).WithPrefix(), "=", 0)).
		Then(clientv3.OpPut(s.k.migrating(), "import")).Commit()
	if err != nil {
		return unavailable("import", err)
	}
	if !res.Succeeded {
		return fmt.Errorf("etcdstore: import into %s: %w", strings.TrimSuffix(prefix, "/"), ErrNotEmpty)
	}
	return nil
}

// Migrating reports whether an Import into the prefix has not finished.
func (s *Store) Migrating(ctx context.Context) (bool, error) {
	res, err := s.cli.Get(ctx, s.k.migrating(), clientv3.WithCountOnly())
	if err != nil {
		return false, unavailable("read", err)
	}
	return res.Count > 0, nil
}

func putJSON(t *txn, key, what string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("%w: encode %s: %v", broker.ErrInvalidChange, what, err)
	}
	t.put(key, b)
	return nil
}

// importer writes into an empty prefix in transactions of at most
// maxBatchOps writes. Its transactions are blind: nothing is read (the
// prefix was empty, and each key is written once), nothing compared.
type importer struct {
	s   *Store
	ctx context.Context
	t   *txn
}

// add writes one record's keys (a dozen at most), and commits once the
// transaction is full: the bounds leave room for the last record.
func (im *importer) add(write func(*txn) error) error {
	if im.t == nil {
		im.t = newTxn(im.ctx, im.s.cli)
		im.t.blind = true
	}
	if err := write(im.t); err != nil {
		return err
	}
	if !im.t.full() {
		return nil
	}
	return im.flush()
}

// flush commits what is buffered.
func (im *importer) flush() error {
	if im.t == nil || im.t.empty() {
		return nil
	}
	err := im.t.commit()
	im.t = nil
	if err != nil {
		return fmt.Errorf("etcdstore: import: %w", err)
	}
	return nil
}
