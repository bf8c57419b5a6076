package etcdstore

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/latchbroker/latch/broker"
)

// view reads at one revision, fixed by its first read: a listing that
// takes several requests sees one state of the store.
type view struct {
	ctx context.Context
	kv  clientv3.KV
	rev int64
}

func (s *Store) view(ctx context.Context) (*view, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	return &view{ctx: ctx, kv: s.cli}, nil
}

// at adds the view's revision once the first read fixed it.
func (v *view) at(opts ...clientv3.OpOption) []clientv3.OpOption {
	if v.rev > 0 {
		opts = append(opts, clientv3.WithRev(v.rev))
	}
	return opts
}

func (v *view) read(key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	res, err := v.kv.Get(v.ctx, key, v.at(opts...)...)
	if err != nil {
		return nil, unavailable("read "+key, err)
	}
	v.rev = res.Header.Revision
	return res, nil
}

func (v *view) get(key string) ([]byte, error) {
	res, err := v.read(key)
	if err != nil || len(res.Kvs) == 0 {
		return nil, err
	}
	return res.Kvs[0].Value, nil
}

// pageSize is how many keys one request of a scan returns.
const pageSize = 512

// scan calls fn for the keys in [from, end), in order (backwards when
// desc), a page at a time, until fn returns false.
func (v *view) scan(from, end string, desc bool, fn func(k string, val []byte) (bool, error)) error {
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(pageSize)}
		if desc {
			opts = append(opts, clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend))
		}
		res, err := v.read(from, opts...)
		if err != nil {
			return err
		}
		for _, kv := range res.Kvs {
			more, err := fn(string(kv.Key), kv.Value)
			if err != nil || !more {
				return err
			}
		}
		if !res.More || len(res.Kvs) == 0 {
			return nil
		}
		last := string(res.Kvs[len(res.Kvs)-1].Key)
		if desc {
			end = last // exclusive
		} else {
			from = last + "\x00"
		}
	}
}

// prefix scans every key with prefix p.
func (v *view) prefix(p string, desc bool, fn func(k string, val []byte) (bool, error)) error {
	return v.scan(p, clientv3.GetPrefixRangeEnd(p), desc, fn)
}

// indexed reads the records of T that an index named, a page of them per
// request, and hands each to keep until it returns false.
func indexed[T any](v *view, ids []string, key func(string) string, what string, keep func(*T) bool) error {
	for len(ids) > 0 {
		page := ids[:min(len(ids), pageSize)]
		ids = ids[len(page):]
		ops := make([]clientv3.Op, len(page))
		for i, id := range page {
			ops[i] = clientv3.OpGet(key(id), v.at()...)
		}
		res, err := v.kv.Txn(v.ctx).Then(ops...).Commit()
		if err != nil {
			return unavailable("read "+what+"s", err)
		}
		v.rev = res.Header.Revision
		for i, r := range res.Responses {
			kvs := r.GetResponseRange().Kvs
			if len(kvs) == 0 {
				return fmt.Errorf("etcdstore: %w: %w: an index names %s %s, which does not exist", broker.ErrStoreUnavailable, ErrCorrupt, what, page[i])
			}
			rec, err := decode[T](what+" "+page[i], kvs[0].Value)
			if err != nil {
				return err
			}
			if !keep(rec) {
				return nil
			}
		}
	}
	return nil
}

// record reads one record of T, or notFound.
func record[T any](v *view, key, what string, notFound error) (*T, error) {
	b, err := v.get(key)
	if err != nil {
		return nil, err
	}
	if b == nil {
		return nil, notFound
	}
	return decode[T](what, b)
}

// Lease implements broker.Store.
func (s *Store) Lease(ctx context.Context, id string) (*broker.Lease, error) {
	v, err := s.view(ctx)
	if err != nil {
		return nil, err
	}
	return record[broker.Lease](v, s.k.lease(id), "lease "+id, broker.ErrLeaseNotFound)
}

// LeaseByRequest implements broker.Store.
func (s *Store) LeaseByRequest(ctx context.Context, agent, requestID string) (*broker.Lease, error) {
	v, err := s.view(ctx)
	if err != nil {
		return nil, err
	}
	id, err := v.get(s.k.index(ixRequest, agent, requestID))
	if err != nil || id == nil {
		return nil, orNotFound(err, broker.ErrLeaseNotFound)
	}
	return record[broker.Lease](v, s.k.lease(string(id)), "lease "+string(id), fmt.Errorf("etcdstore: %w: %w: the request index names lease %s, which does not exist", broker.ErrStoreUnavailable, ErrCorrupt, id))
}

func orNotFound(err, notFound error) error {
	if err != nil {
		return err
	}
	return notFound
}

// Leases implements broker.Store: newest first, from the agent index when
// f names an agent, else the task index, else the state indexes, else all
// leases.
func (s *Store) Leases(ctx context.Context, f broker.LeaseFilter) ([]*broker.Lease, error) {
	out := []*broker.Lease{}
	if f.State != "" && f.LiveOnly && !f.State.Live() {
		return out, nil
	}
	v, err := s.view(ctx)
	if err != nil {
		return nil, err
	}
	keep := func(l *broker.Lease) bool {
		if f.Match(l) {
			out = append(out, l)
		}
		return f.Limit <= 0 || len(out) < f.Limit
	}
	if f.Agent == "" && f.Task == "" && f.State == "" && !f.LiveOnly {
		err := v.prefix(s.k.leases(), true, func(k string, val []byte) (bool, error) {
			l, err := decode[broker.Lease](k, val)
			return err == nil && keep(l), err
		})
		return out, err
	}
	ids, err := s.leaseIDs(v, f)
	if err != nil {
		return nil, err
	}
	return out, indexed(v, ids, s.k.lease, "lease", keep)
}

// leaseIDs lists, newest first, the IDs of the index that suits f (states
// in the index values are checked before any lease is read).
func (s *Store) leaseIDs(v *view, f broker.LeaseFilter) ([]string, error) {
	stateOK := func(st string) bool {
		return (f.State == "" || st == string(f.State)) && (!f.LiveOnly || broker.LeaseState(st).Live())
	}
	var prefixes []string
	check := false
	switch {
	case f.Agent != "":
		prefixes, check = []string{s.k.indexOf(ixAgent, f.Agent)}, true
	case f.Task != "":
		prefixes, check = []string{s.k.indexOf(ixTask, f.Task)}, true
	case f.State != "":
		prefixes = []string{s.k.indexOf(ixState, string(f.State))}
	default: // LiveOnly
		for _, st := range []broker.LeaseState{broker.StatePending, broker.StateActive, broker.StateRevoking, broker.StateIrrevocable} {
			prefixes = append(prefixes, s.k.indexOf(ixState, string(st)))
		}
	}
	var ids []string
	for _, p := range prefixes {
		err := v.prefix(p, true, func(k string, val []byte) (bool, error) {
			if !check || stateOK(string(val)) {
				ids = append(ids, splitID(k))
			}
			return true, nil
		})
		if err != nil {
			return nil, err
		}
	}
	if len(prefixes) > 1 {
		slices.Sort(ids)
		slices.Reverse(ids)
	}
	return ids, nil
}

// CountByTask implements broker.Store, from the task index's values.
func (s *Store) CountByTask(ctx context.Context, state broker.LeaseState) (map[string]int, error) {
	v, err := s.view(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	all := s.k.indexAll(ixTask)
	err = v.prefix(all, false, func(k string, val []byte) (bool, error) {
		if string(val) == string(state) {
			task, _, _ := strings.Cut(k[len(all):], "\x00")
			out[task]++
		}
		return true, nil
	})
	return out, err
}

// due lists the IDs of a deadline index due before end (a time key),
// soonest first, as long as more says.
func (s *Store) due(v *view, name string, end string, fn func(id string) (bool, error)) error {
	all := s.k.indexAll(name)
	return v.scan(all, all+end, false, func(k string, _ []byte) (bool, error) {
		return fn(k[len(all)+16:])
	})
}

// notAfter is the end of a time index's range that holds the entries at
// t or before: past every entry when t clamps to the end of time.
func notAfter(t time.Time) string {
	ord := timeOrd(t)
	if ord == math.MaxUint64 {
		return "g" // after every 16-hex-digit time
	}
	return fmt.Sprintf("%016x", ord+1)
}

// ExpiringBefore implements broker.Store.
func (s *Store) ExpiringBefore(ctx context.Context, t time.Time, limit int) ([]*broker.Lease, error) {
	v, err := s.view(ctx)
	if err != nil {
		return nil, err
	}
	out := []*broker.Lease{}
	err = s.due(v, ixExpiry, timeHex(t), func(id string) (bool, error) {
		l, err := record[broker.Lease](v, s.k.lease(id), "lease "+id, fmt.Errorf("etcdstore: %w: %w: the expiry index names lease %s, which does not exist", broker.ErrStoreUnavailable, ErrCorrupt, id))
		if err != nil {
			return false, err
		}
		if l.State == broker.StateActive {
			out = append(out, l)
		}
		return limit <= 0 || len(out) < limit, nil
	})
	return out, err
}

// list decodes every record under prefix p, in key order.
func list[T any](v *view, p string) ([]*T, error) {
	out := []*T{}
	err := v.prefix(p, false, func(k string, val []byte) (bool, error) {
		r, err := decode[T](k, val)
		if err == nil {
			out = append(out, r)
		}
		return err == nil, err
	})
	return out, err
}

// Intents implements broker.Store: oldest first.
func (s *Store) Intents(ctx context.Context) ([]*broker.Lease, error) {
	v, err := s.view(ctx)
	if err != nil {
		return nil, err
	}
	return list[broker.Lease](v, s.k.intents())
}

// PolicyUse implements broker.Store.
func (s *Store) PolicyUse(ctx context.Context) (broker.PolicyUse, error) {
	use := broker.PolicyUse{Live: map[string]bool{}, LiveGroups: map[string]bool{}}
	v, err := s.view(ctx)
	if err != nil {
		return use, err
	}
	err = v.prefix(s.k.indexAll(ixLive), false, func(_ string, val []byte) (bool, error) {
		_, p, g := splitLive(val)
		if p != "" {
			use.Live[p] = true
		}
		if g != "" {
			use.LiveGroups[g] = true
		}
		return true, nil
	})
	if err != nil {
		return use, err
	}
	err = v.prefix(s.k.deletings(), false, func(k string, _ []byte) (bool, error) {
		use.Deleting = append(use.Deleting, strings.TrimPrefix(k, s.k.deletings()))
		return true, nil
	})
	return use, err
}

// RetiredGroups implements broker.Store.
func (s *Store) RetiredGroups(ctx context.Context) ([]broker.RetiredGroup, error) {
	v, err := s.view(ctx)
	if err != nil {
		return nil, err
	}
	var out []broker.RetiredGroup
	err = v.prefix(s.k.retireds(), false, func(k string, val []byte) (bool, error) {
		m, err := decode[retiredMark](k, val)
		if err == nil {
			out = append(out, broker.RetiredGroup{Group: strings.TrimPrefix(k, s.k.retireds()), Backend: m.Backend, At: m.At})
		}
		return err == nil, err
	})
	return out, err
}

// DueRevocations implements broker.Store: NextAttempt not after now.
func (s *Store) DueRevocations(ctx context.Context, now time.Time, limit int) ([]broker.Revocation, error) {
	v, err := s.view(ctx)
	if err != nil {
		return nil, err
	}
	out := []broker.Revocation{}
	err = s.due(v, ixDue, notAfter(now), func(id string) (bool, error) {
		r, err := record[broker.Revocation](v, s.k.revocation(id), "revocation "+id, fmt.Errorf("etcdstore: %w: %w: the due index names revocation %s, which does not exist", broker.ErrStoreUnavailable, ErrCorrupt, id))
		if err != nil {
			return false, err
		}
		out = append(out, *r)
		return limit <= 0 || len(out) < limit, nil
	})
	return out, err
}

// count counts the keys under prefix p without reading them.
func (v *view) count(p string) (int, error) {
	res, err := v.read(p, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	return int(res.Count), nil
}

// QueueDepth implements broker.Store.
func (s *Store) QueueDepth(ctx context.Context) (int, error) {
	v, err := s.view(ctx)
	if err != nil {
		return 0, err
	}
	return v.count(s.k.revocations())
}

// Agent implements broker.Store.
func (s *Store) Agent(ctx context.Context, id string) (broker.AgentRecord, error) {
	v, err := s.view(ctx)
	if err != nil {
		return broker.AgentRecord{}, err
	}
	rec, err := record[broker.AgentRecord](v, s.k.agent(id), "agent "+id, nil)
	if err != nil || rec == nil {
		return broker.AgentRecord{ID: id, State: broker.AgentActive}, err
	}
	return *rec, nil
}

// Agents implements broker.Store.
func (s *Store) Agents(ctx context.Context) ([]broker.AgentRecord, error) {
	v, err := s.view(ctx)
	if err != nil {
		return nil, err
	}
	recs, err := list[broker.AgentRecord](v, s.k.agents())
	out := make([]broker.AgentRecord, len(recs))
	for i, r := range recs {
		out[i] = *r
	}
	return out, err
}

// getter reads one key: txn.get in a transaction (a condition), view.get
// for a plain read.
type getter func(key string) ([]byte, error)

// freeze reads the global freeze; inactive when never set.
func (s *Store) freeze(get getter) (broker.FreezeState, error) {
	b, err := get(s.k.freeze())
	if err != nil || b == nil {
		return broker.FreezeState{}, err
	}
	fs, err := decode[broker.FreezeState]("freeze", b)
	if err != nil {
		return broker.FreezeState{}, err
	}
	return *fs, nil
}

// Freeze implements broker.Store.
func (s *Store) Freeze(ctx context.Context) (broker.FreezeState, error) {
	v, err := s.view(ctx)
	if err != nil {
		return broker.FreezeState{}, err
	}
	return s.freeze(v.get)
}

// Grants implements broker.Store.
func (s *Store) Grants(ctx context.Context) ([]broker.Grant, error) {
	v, err := s.view(ctx)
	if err != nil {
		return nil, err
	}
	gs, err := record[[]broker.Grant](v, s.k.grants(), "grants", nil)
	if err != nil || gs == nil {
		return nil, err
	}
	return *gs, nil
}

// Approval implements broker.Store.
func (s *Store) Approval(ctx context.Context, id string) (*broker.Approval, error) {
	v, err := s.view(ctx)
	if err != nil {
		return nil, err
	}
	return record[broker.Approval](v, s.k.approval(id), "approval "+id, broker.ErrApprovalNotFound)
}

// ApprovalByRequest implements broker.Store.
func (s *Store) ApprovalByRequest(ctx context.Context, agent, requestID string) (*broker.Approval, error) {
	v, err := s.view(ctx)
	if err != nil {
		return nil, err
	}
	id, err := v.get(s.k.index(ixApRequest, agent, requestID))
	if err != nil || id == nil {
		return nil, orNotFound(err, broker.ErrApprovalNotFound)
	}
	return record[broker.Approval](v, s.k.approval(string(id)), "approval "+string(id), fmt.Errorf("etcdstore: %w: %w: the request index names approval %s, which does not exist", broker.ErrStoreUnavailable, ErrCorrupt, id))
}

// Approvals implements broker.Store: newest first, from the agent index
// when f names an agent, else the status index, else all approvals.
func (s *Store) Approvals(ctx context.Context, f broker.ApprovalFilter) ([]*broker.Approval, error) {
	v, err := s.view(ctx)
	if err != nil {
		return nil, err
	}
	out := []*broker.Approval{}
	keep := func(a *broker.Approval) bool {
		if f.Match(a) {
			out = append(out, a)
		}
		return f.Limit <= 0 || len(out) < f.Limit
	}
	if f.Agent == "" && f.Status == "" {
		err := v.prefix(s.k.approvals(), true, func(k string, val []byte) (bool, error) {
			a, err := decode[broker.Approval](k, val)
			return err == nil && keep(a), err
		})
		return out, err
	}
	p := s.k.indexOf(ixApStatus, string(f.Status))
	if f.Agent != "" {
		p = s.k.indexOf(ixApAgent, f.Agent)
	}
	var ids []string
	err = v.prefix(p, true, func(k string, val []byte) (bool, error) {
		if f.Agent == "" || f.Status == "" || string(val) == string(f.Status) {
			ids = append(ids, splitID(k))
		}
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	return out, indexed(v, ids, s.k.approval, "approval", keep)
}

// ExpiringApprovals implements broker.Store.
func (s *Store) ExpiringApprovals(ctx context.Context, now time.Time, limit int) ([]*broker.Approval, error) {
	v, err := s.view(ctx)
	if err != nil {
		return nil, err
	}
	out := []*broker.Approval{}
	err = s.due(v, ixApDue, timeHex(now), func(id string) (bool, error) {
		a, err := record[broker.Approval](v, s.k.approval(id), "approval "+id, fmt.Errorf("etcdstore: %w: %w: the deadline index names approval %s, which does not exist", broker.ErrStoreUnavailable, ErrCorrupt, id))
		if err != nil {
			return false, err
		}
		if a.Status.Open() {
			out = append(out, a)
		}
		return limit <= 0 || len(out) < limit, nil
	})
	return out, err
}

// CountApprovals implements broker.Store.
func (s *Store) CountApprovals(ctx context.Context, status broker.ApprovalStatus) (int, error) {
	v, err := s.view(ctx)
	if err != nil {
		return 0, err
	}
	return v.count(s.k.indexOf(ixApStatus, string(status)))
}
