package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/latchbroker/latch/broker/api"
	"github.com/latchbroker/latch/broker/client"
)

// auditTailCommand is latch audit tail: the recent audit events from the
// server, and with -f the live stream.
func auditTailCommand() *cli.Command {
	return operatorCommand("tail", "show recent audit events from the server; -f follows the live stream (viewer)",
		"latch audit tail [-f] [-n N] [--agent ID] [--type T]... [-o table|json]",
		"Prints the last -n audit events (of one agent, as actor or subject, and of\n"+
			"some types if asked: issue, deny, violation, revoke, ...), oldest first. With\n"+
			"-f it then follows the server's live event stream (Server-Sent Events) until\n"+
			"interrupted, resuming after a dropped connection. -o json prints one JSON\n"+
			"object per line.",
		[]cli.Flag{
			&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "follow the live stream"},
			&cli.IntFlag{Name: "lines", Aliases: []string{"n"}, Value: 20, Usage: "how many recent events to print first"},
			&cli.StringFlag{Name: "agent", Usage: "only events of this agent (SPIFFE `ID`)"},
			&cli.StringSliceFlag{Name: "type", Usage: "only events of this `TYPE`; repeat or separate with commas"},
			outputFlag("table", "json"),
		}, runAuditTail)
}

func runAuditTail(c *cli.Context, args []string, connect connector) error {
	if len(args) > 0 {
		return usageErrorf("unexpected argument %q: audit tail takes only flags", args[0])
	}
	n := c.Int("lines")
	if n < 0 || n > api.MaxListLimit {
		return usageErrorf("-n: expected 0 to %d, got %d", api.MaxListLimit, n)
	}
	var types []string
	for _, t := range c.StringSlice("type") {
		for p := range strings.SplitSeq(t, ",") {
			if p = strings.TrimSpace(p); p != "" {
				types = append(types, p)
			}
		}
	}
	cl, err := connect()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	p := eventPrinter{w: c.App.Writer, json: c.String("output") == "json"}
	head, recent, err := recentEvents(ctx, cl, c.String("agent"), types, n)
	if err != nil {
		return err
	}
	p.header()
	for _, e := range recent {
		if err := p.print(e); err != nil {
			return err
		}
	}
	if !c.Bool("follow") {
		return nil
	}
	after := head
	for {
		err := followEvents(ctx, cl, api.EventsQuery{Agent: c.String("agent"), Types: types, After: after}, &p, &after)
		if ctx.Err() != nil {
			return nil // interrupted: a normal end of -f
		}
		if _, ok := errors.AsType[*client.Error](err); ok {
			return err
		}
		fmt.Fprintf(c.App.ErrWriter, "latch: event stream: %v; reconnecting\n", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(2 * time.Second):
		}
	}
}

func followEvents(ctx context.Context, cl *client.Client, q api.EventsQuery, p *eventPrinter, after *uint64) error {
	s, err := cl.Events(ctx, q)
	if err != nil {
		return err
	}
	defer s.Close()
	for {
		e, err := s.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return errors.New("the server ended the stream")
			}
			return err
		}
		*after = s.LastSeq()
		if err := p.print(e); err != nil {
			return err
		}
	}
}

// recentEvents returns the sequence number of the last event of the log
// and the last n events matching the filter. The API pages forward from a
// sequence number, so it finds the head first, then reads back from it in
// growing windows until it has n matches or reached the start.
func recentEvents(ctx context.Context, cl *client.Client, agent string, types []string, n int) (uint64, []api.Event, error) {
	head, err := auditHead(ctx, cl)
	if err != nil || n == 0 || head == 0 {
		return head, nil, err
	}
	window := uint64(n)
	for {
		start := uint64(0)
		if head > window {
			start = head - window
		}
		var got []api.Event
		after := start
		for after < head {
			cctx, cancel := context.WithTimeout(ctx, remoteCallTimeout)
			page, err := cl.Audit(cctx, api.AuditQuery{After: after, Limit: api.MaxListLimit, Agent: agent, Types: types})
			cancel()
			if err != nil {
				return 0, nil, err
			}
			for _, e := range page.Events {
				if e.Seq <= head {
					got = append(got, e)
				}
			}
			if len(got) > n {
				got = got[len(got)-n:]
			}
			if !page.More || page.Next <= after {
				break
			}
			after = page.Next
		}
		if len(got) >= n || start == 0 {
			return head, got, nil
		}
		window *= 8
	}
}

// auditHead finds the sequence number of the last event: the largest
// after for which a page of one is not empty.
func auditHead(ctx context.Context, cl *client.Client) (uint64, error) {
	has := func(after uint64) (bool, error) {
		cctx, cancel := context.WithTimeout(ctx, remoteCallTimeout)
		defer cancel()
		page, err := cl.Audit(cctx, api.AuditQuery{After: after, Limit: 1})
		if err != nil {
			return false, err
		}
		return len(page.Events) > 0, nil
	}
	if ok, err := has(0); err != nil || !ok {
		return 0, err // an empty log
	}
	// Invariant: an event exists after lo; none after hi.
	lo, hi := uint64(0), uint64(1)
	for {
		ok, err := has(hi)
		if err != nil {
			return 0, err
		}
		if !ok {
			break
		}
		lo, hi = hi, hi*2
	}
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		ok, err := has(mid)
		if err != nil {
			return 0, err
		}
		if ok {
			lo = mid
		} else {
			hi = mid
		}
	}
	return hi, nil
}

// eventRow has fixed widths rather than a tabwriter, because -f prints rows
// as they arrive; the long SPIFFE IDs go last.
const eventRow = "%-6s %-20s %-18s %-10s %-16s %-26s %s %s %s\n"

// eventPrinter prints audit events as table lines or JSON lines.
type eventPrinter struct {
	w    io.Writer
	json bool
}

// writeJSONLine writes v as one line of JSON.
func writeJSONLine(w io.Writer, v any) error {
	return json.NewEncoder(w).Encode(v)
}

func (p *eventPrinter) header() {
	if !p.json {
		fmt.Fprintf(p.w, eventRow, "SEQ", "TIME", "TYPE", "OUTCOME", "TASK", "LEASE", "ACTOR", "SUBJECT", "REASONS")
	}
}

func (p *eventPrinter) print(e api.Event) error {
	if p.json {
		return writeJSONLine(p.w, e)
	}
	_, err := fmt.Fprintf(p.w, eventRow, strconv.FormatUint(e.Seq, 10), fmtTime(e.Time), e.Type, dash(e.Outcome),
		dash(e.Task), dash(e.Lease), dash(e.Actor), dash(e.Subject), dash(strings.Join(e.Reasons, ",")))
	return err
}
