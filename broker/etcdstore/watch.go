package etcdstore

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/latchbroker/latch/broker"
)

var _ broker.EventWatcher = (*Store)(nil)

// WatchEvents implements broker.EventWatcher with an etcd watch on the
// audit log's records, from the revision at which it starts: every
// replica's events, in revision order, which is the chain's (each append
// moves the head, so no two commits append at one revision). Events that
// a break of the watch skips are read from the log by broker's Follow.
func (s *Store) WatchEvents(ctx context.Context, started func(), fn func([]broker.Event)) error {
	if err := s.ready(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	from := s.audit.eventKey(0)
	wch := s.cli.Watch(ctx, from, clientv3.WithRange(s.audit.eventsEnd()), clientv3.WithCreatedNotify())
	for res := range wch {
		if err := res.Err(); err != nil {
			return unavailable("watch the audit log", err)
		}
		if res.Created {
			started()
			continue
		}
		events, err := decodeEvents(res.Events)
		if err != nil {
			return err
		}
		if len(events) > 0 {
			fn(events)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return unavailable("watch the audit log", errors.New("the watch ended"))
}

// decodeEvents decodes the records a watch response puts, in Seq order.
func decodeEvents(evs []*clientv3.Event) ([]broker.Event, error) {
	var out []broker.Event
	for _, ev := range evs {
		if ev.Type != clientv3.EventTypePut {
			continue // pruned
		}
		var e broker.Event
		if err := json.Unmarshal(ev.Kv.Value, &e); err != nil {
			return nil, fmt.Errorf("%w: %w: audit record %s: %v", broker.ErrStoreUnavailable, ErrCorrupt, ev.Kv.Key, err)
		}
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b broker.Event) int { return cmp.Compare(a.Seq, b.Seq) })
	return out, nil
}
