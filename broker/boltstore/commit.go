package boltstore

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// errClosed is what writes get once Close has begun.
var errClosed = errors.New("store is closed")

// committer is the store's group commit. Writes queue up while a commit is
// on the disk and go together in the next transaction, so under load many
// Applys share one fsync — the batch grows with the load — while a lone
// write commits at once instead of waiting out a timer.
//
// DB.Batch is the same idea with a fixed timer: every write waits the full
// delay even when the disk is idle and every caller has already joined, and
// issuance pays it twice (intent, then commit). Like DB.Batch, a function
// that fails takes the batch down with it; the batch is then run again
// without it and it runs alone, so one bad change never fails another.
type committer struct {
	db      *bolt.DB
	linger  time.Duration
	maxSize int

	// commits counts transactions, for the benchmarks.
	commits atomic.Int64

	mu     sync.Mutex
	queue  []*call
	closed bool
	wake   chan struct{}
	done   chan struct{}
}

type call struct {
	fn  func(*bolt.Tx) error
	err chan error
}

func newCommitter(db *bolt.DB, linger time.Duration) *committer {
	c := &committer{
		db:      db,
		linger:  linger,
		maxSize: 1000,
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	go c.loop()
	return c
}

// submit queues fn and returns a channel that gets its result: nil once
// the transaction that ran it committed.
func (c *committer) submit(fn func(*bolt.Tx) error) <-chan error {
	cl := &call{fn: fn, err: make(chan error, 1)}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		cl.err <- errClosed
		return cl.err
	}
	c.queue = append(c.queue, cl)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default: // already woken
	}
	return cl.err
}

// close stops taking writes, commits what is queued and waits for it.
func (c *committer) close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	<-c.done
}

func (c *committer) loop() {
	defer close(c.done)
	for range c.wake {
		// Coming from idle, optionally give a burst a moment to gather.
		if c.linger > 0 {
			time.Sleep(c.linger)
		}
		for {
			c.mu.Lock()
			n := min(len(c.queue), c.maxSize)
			batch := c.queue[:n:n]
			c.queue = c.queue[n:]
			closed := c.closed && len(c.queue) == 0
			c.mu.Unlock()
			if n > 0 {
				c.run(batch)
			}
			if closed {
				return
			}
			if n == 0 {
				break
			}
		}
	}
}

// run commits batch in one transaction, taking out any function that
// fails and running it alone.
func (c *committer) run(batch []*call) {
	for len(batch) > 0 {
		c.commits.Add(1)
		failed := -1
		err := c.db.Update(func(tx *bolt.Tx) error {
			for i, cl := range batch {
				if err := safely(cl.fn, tx); err != nil {
					failed = i
					return err
				}
			}
			return nil
		})
		if failed < 0 {
			for _, cl := range batch {
				cl.err <- err
			}
			return
		}
		cl := batch[failed]
		batch = append(batch[:failed:failed], batch[failed+1:]...)
		c.commits.Add(1)
		cl.err <- c.db.Update(func(tx *bolt.Tx) error { return safely(cl.fn, tx) })
	}
}

// safely turns a panic in fn into an error, so one bad write cannot take
// the committer (and every queued write) down.
func safely(fn func(*bolt.Tx) error, tx *bolt.Tx) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic in write: %v", p)
		}
	}()
	return fn(tx)
}
