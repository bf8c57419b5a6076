package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/checkpoint"
)

// checkpointer signs a checkpoint of the audit chain every `every` events
// or `interval`, whichever comes first, once there is something new to
// sign: an audit event, a line in latch's log and, when file is set, a
// line appended to that file. Each copy kept outside the database is what
// `latch audit verify --checkpoint` checks the chain against.
type checkpointer struct {
	audit    broker.Audit
	svids    x509svid.Source
	every    int
	interval time.Duration
	file     string
	log      *slog.Logger
}

// head is the newest event a checkpoint could cover.
type head struct {
	seq  uint64
	hash string
}

// run follows the audit log until ctx ends.
func (c *checkpointer) run(ctx context.Context) {
	start, err := c.audit.LastSeq(ctx)
	if err != nil {
		c.log.Error("audit checkpoints: read the chain's end", "err", err)
		return
	}
	latest := make(chan head, 1)
	full := make(chan struct{}, 1)
	go func() {
		// A failure to read the log delays checkpoints; watch resumes
		// after the last event it saw.
		for after := start; ; {
			err := c.watch(ctx, &after, latest, full)
			if ctx.Err() != nil {
				return
			}
			c.log.Error("audit checkpoints: following the audit log failed; resuming", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	}()
	c.sign(ctx, latest, full)
}

// watch follows the events after *after, keeping the newest in latest and
// waking full every `every` events. Checkpoints themselves are not
// counted: a checkpoint never calls for another.
func (c *checkpointer) watch(ctx context.Context, after *uint64, latest chan head, full chan struct{}) error {
	n := 0
	return c.audit.Follow(ctx, *after, broker.EventFilter{}, func(evs []broker.Event) error {
		for _, e := range evs {
			*after = e.Seq
			if e.Type == broker.EventCheckpoint {
				continue
			}
			n++
			select { // keep only the newest
			case <-latest:
			default:
			}
			latest <- head{seq: e.Seq, hash: e.Hash}
		}
		if n >= c.every {
			n = 0
			select {
			case full <- struct{}{}:
			default:
			}
		}
		return nil
	})
}

// sign writes a checkpoint of the newest event each interval, or at once
// when `every` events have come, until ctx ends.
func (c *checkpointer) sign(ctx context.Context, latest chan head, full chan struct{}) {
	tick := time.NewTicker(c.interval)
	defer tick.Stop()
	var pending, done head
	for {
		select {
		case <-ctx.Done():
			return
		case h := <-latest:
			pending = h
			continue
		case <-full:
		case <-tick.C:
		}
		select {
		case h := <-latest:
			pending = h
		default:
		}
		if pending.seq > done.seq {
			if err := c.write(ctx, pending); err != nil {
				c.log.Error("audit checkpoint", "seq", pending.seq, "err", err)
				continue
			}
			done = pending
		}
	}
}

func (c *checkpointer) write(ctx context.Context, h head) error {
	svid, err := c.svids.GetX509SVID()
	if err != nil {
		return fmt.Errorf("latch's SVID: %w", err)
	}
	signed, err := checkpoint.Sign(checkpoint.Checkpoint{Seq: h.seq, Hash: h.hash, Time: time.Now()}, svid)
	if err != nil {
		return err
	}
	c.log.Info("audit checkpoint", "seq", h.seq, "hash", h.hash, "jws", signed)
	if c.file != "" {
		f, err := os.OpenFile(c.file, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		_, werr := fmt.Fprintln(f, signed)
		if err := f.Close(); werr == nil {
			werr = err
		}
		if werr != nil {
			return fmt.Errorf("append to %s: %w", c.file, werr)
		}
	}
	return c.audit.Checkpoint(ctx, h.seq, h.hash, signed)
}
