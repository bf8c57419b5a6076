package etcdstore

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/latchbroker/latch/broker"
)

// committer is the store's group commit: changes queue up while a
// transaction is in flight and go together in the next one, so that a
// replica's concurrent changes share one etcd round trip (and one raft
// entry) instead of racing each other for the audit head. Each change is
// written on the state its predecessors in the batch left; one that fails
// a condition or cannot be read is taken out of the batch alone.
type committer struct {
	s *Store
	// conflicts counts batches that another replica's write sent back to
	// read again.
	conflicts atomic.Int64

	mu     sync.Mutex
	q      []*pending
	closed bool // no more changes are taken
	wake   chan struct{}
	stop   chan struct{}
	done   chan struct{}
}

// maxBatchOps and maxBatchBytes bound a batch below the --max-txn-ops
// (10000) and --max-request-bytes (10 MiB) the cluster needs, and the
// client's MaxCallSendMsgSize (ClientMaxSend): a batch ends before the
// change that would pass one.
const (
	maxBatchOps   = 8000
	maxBatchBytes = 6 << 20
)

// ClientMaxSend is the MaxCallSendMsgSize a client of the store needs:
// more than a batch's bytes (clientv3's default is 2 MiB).
const ClientMaxSend = 10 << 20

// commitTimeout bounds one batch's reads and commit.
const commitTimeout = 10 * time.Second

// pending is one Apply waiting for its batch.
type pending struct {
	c      *broker.Change
	fence  *Fence         // from Apply's context: see Fence
	events []broker.Event // stamped, not yet chained
	out    []broker.Event
	failed *broker.ConditionFailed
	err    error
	done   chan struct{}

	mu      sync.Mutex
	entered bool // in a batch: the caller waits for the outcome
	gone    bool // withdrawn before any batch took it
}

func newCommitter(s *Store) *committer {
	c := &committer{s: s, wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go c.loop()
	return c
}

// apply queues p and waits for its outcome, or withdraws it when ctx ends
// before a batch took it.
func (c *committer) apply(ctx context.Context, p *pending) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return unavailable("apply", errors.New("the store is closed"))
	}
	c.q = append(c.q, p)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		p.mu.Lock()
		withdrawn := !p.entered
		p.gone = withdrawn
		p.mu.Unlock()
		if withdrawn {
			return ctx.Err()
		}
		<-p.done
		return nil
	}
}

func (c *committer) close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	close(c.stop)
	<-c.done
}

func (c *committer) loop() {
	defer close(c.done)
	for {
		select {
		case <-c.stop:
			c.fail(errors.New("the store is closed"))
			return
		case <-c.wake:
		}
		for {
			c.mu.Lock()
			batch := c.q
			c.q = nil
			c.mu.Unlock()
			if len(batch) == 0 {
				break
			}
			if rest := c.run(batch); len(rest) > 0 {
				c.mu.Lock()
				c.q = append(rest, c.q...)
				c.mu.Unlock()
			}
		}
	}
}

// fail ends every queued change with err.
func (c *committer) fail(err error) {
	c.mu.Lock()
	q := c.q
	c.q = nil
	c.mu.Unlock()
	for _, p := range q {
		p.err = unavailable("apply", err)
		close(p.done)
	}
}

// run commits what it can of batch in one transaction, retrying when
// another replica wrote what it read, and returns the changes it left for
// the next batch (past maxBatchOps, or under another fence). The batch's
// fence is its first fenced change's; when it fails, the fenced changes
// fail with ErrFenced and the others are tried again without it.
func (c *committer) run(batch []*pending) []*pending {
	live, later := c.enter(batch)
	fence := fenceOfBatch(live)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), commitTimeout)
		t := newTxn(ctx, c.s.cli)
		t.fence = fence
		now := c.s.now()
		var keys []string
		for _, p := range live {
			keys = append(keys, c.s.keysOf(p.c)...)
		}
		if err := t.prefetch(keys); err != nil {
			cancel()
			finish(live, err)
			return later
		}
		var in, rest []*pending
		for i, p := range live {
			sp := t.savepoint()
			p.out = append(p.out[:0], p.events...)
			p.failed, p.err = c.s.write(t, p.c, p.out, now)
			if p.failed != nil || p.err != nil {
				t.restore(sp)
				continue
			}
			if t.full() && len(in) > 0 {
				t.restore(sp)
				rest = live[i:]
				break
			}
			in = append(in, p)
		}
		var err error
		if !t.empty() {
			err = t.commit()
		}
		cancel()
		switch {
		case errors.Is(err, errConflict):
			c.conflicts.Add(1)
			continue // read everything again
		case errors.Is(err, ErrFenced):
			var unfenced []*pending
			for _, p := range live {
				if p.fence == nil {
					unfenced = append(unfenced, p)
				} else {
					p.out, p.failed, p.err = nil, nil, err
					close(p.done)
				}
			}
			live, fence = unfenced, nil
			continue
		}
		for _, p := range in {
			if err != nil {
				p.out, p.err = nil, err
			}
		}
		for _, p := range live[:len(live)-len(rest)] {
			close(p.done)
		}
		return append(rest, later...)
	}
}

// enter takes the changes of batch not withdrawn: those unfenced or under
// the first fence met, and leaves the others for a later batch.
func (c *committer) enter(batch []*pending) (live, later []*pending) {
	var fence *Fence
	for _, p := range batch {
		p.mu.Lock()
		switch {
		case p.gone:
		case p.fence != nil && fence != nil && p.fence != fence:
			later = append(later, p)
		default:
			if p.fence != nil {
				fence = p.fence
			}
			p.entered = true
			live = append(live, p)
		}
		p.mu.Unlock()
	}
	return live, later
}

func fenceOfBatch(live []*pending) *Fence {
	for _, p := range live {
		if p.fence != nil {
			return p.fence
		}
	}
	return nil
}

// finish ends every change of ps with err.
func finish(ps []*pending, err error) {
	for _, p := range ps {
		p.err = err
		close(p.done)
	}
}
