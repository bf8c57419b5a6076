package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/latchbroker/latch/broker"
)

// Options tune a Store.
type Options struct {
	// Now is the clock (time.Now by default): the time of events without
	// one, and of group retirements.
	Now func() time.Time
}

// Store is broker.Store on etcd, under one key prefix. Replicas share a
// store by using the same cluster and prefix.
type Store struct {
	cli     *clientv3.Client
	k       keys
	audit   chain
	now     func() time.Time
	commits *committer
	closed  chan struct{}
}

var _ broker.Store = (*Store)(nil)

// New returns the store under prefix (for example /latch) on cli. Close
// does not close cli: its owner does.
func New(cli *clientv3.Client, prefix string, opts Options) (*Store, error) {
	if cli == nil {
		return nil, errors.New("etcdstore: no client")
	}
	if prefix == "" || prefix[0] != '/' {
		return nil, fmt.Errorf("etcdstore: prefix %q must start with /", prefix)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	k := newKeys(prefix)
	s := &Store{cli: cli, k: k, audit: newChain(cli, k.p[:len(k.p)-1]), now: opts.Now, closed: make(chan struct{})}
	s.commits = newCommitter(s)
	return s, nil
}

// Close ends the store's use: later calls fail with
// broker.ErrStoreUnavailable.
func (s *Store) Close() error {
	select {
	case <-s.closed:
	default:
		close(s.closed)
		s.commits.close()
	}
	return nil
}

// ready fails once the store is closed.
func (s *Store) ready() error {
	select {
	case <-s.closed:
		return fmt.Errorf("etcdstore: %w: the store is closed", broker.ErrStoreUnavailable)
	default:
		return nil
	}
}

// Events implements broker.Store.
func (s *Store) Events(ctx context.Context, after uint64, fn func(broker.Event) (bool, error)) error {
	if err := s.ready(); err != nil {
		return err
	}
	return s.audit.events(ctx, after, fn)
}

// LastEvent implements broker.Store.
func (s *Store) LastEvent(ctx context.Context) (*broker.Event, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	return s.audit.last(ctx)
}
