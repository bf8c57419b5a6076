package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/boltstore"
	"github.com/latchbroker/latch/broker/etcdstore"
)

// etcdOfConfig is store.etcd of --config when no --db is given; nil when
// the audit commands read a bbolt file.
func etcdOfConfig(c *cli.Context) *EtcdConfig {
	if c.String("db") != "" {
		return nil
	}
	cfg, err := LoadConfig(c.String("config"))
	if err != nil {
		return nil // dbPath reports it
	}
	return cfg.Store.Etcd
}

// openEtcdReader dials store.etcd to read the audit log: no session, and
// the replicas do not see it.
func openEtcdReader(ctx context.Context, cfg *EtcdConfig) (*etcdstore.Store, func(), error) {
	cli, err := dialEtcd(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	st, err := etcdstore.New(cli, cmp.Or(cfg.Prefix, "/latch"), etcdstore.Options{})
	if err != nil {
		cli.Close()
		return nil, nil, err
	}
	return st, func() { st.Close(); cli.Close() }, nil
}

// verifyEtcd verifies the chain in etcd and reports it.
func verifyEtcd(c *cli.Context, cfg *EtcdConfig, expect []boltstore.Expectation) error {
	st, closeStore, err := openEtcdReader(c.Context, cfg)
	if err != nil {
		return err
	}
	defer closeStore()
	res, err := verifyEtcdChain(c.Context, st, expect)
	return reportVerify(c, res, err)
}

// verifyEtcdChain verifies the chain in etcd as an export is verified,
// up to the audit head as it stood when it started (replicas may append
// meanwhile): from the record after the anchor (record 1 when nothing was
// pruned), linked to the anchor's hash, each record's link and hash, and
// the last against the head.
func verifyEtcdChain(ctx context.Context, st *etcdstore.Store, expect []boltstore.Expectation) (boltstore.VerifyResult, error) {
	var res boltstore.VerifyResult
	headSeq, headHash, err := st.Head(ctx)
	if err != nil {
		return res, err
	}
	anchorSeq, anchorHash, err := st.Anchor(ctx)
	if err != nil {
		return res, err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeEvents(ctx, st, time.Time{}, anchorSeq, headSeq, pw)) }()
	res, err = boltstore.VerifyExport(bufio.NewReader(pr), expect...)
	pr.Close()
	res.HeadSeq, res.HeadHash = headSeq, headHash
	if err != nil {
		return res, err
	}
	first, err := firstAfter(ctx, st, anchorSeq)
	if err != nil {
		return res, err
	}
	return res, checkEnds(&res, anchorSeq, anchorHash, first)
}

// firstAfter is the first record after seq, nil when there is none.
func firstAfter(ctx context.Context, st *etcdstore.Store, seq uint64) (*broker.Event, error) {
	var first *broker.Event
	err := st.Events(ctx, seq, func(e broker.Event) (bool, error) {
		first = &e
		return false, nil
	})
	return first, err
}

// checkEnds checks where a verified log starts against its anchor and
// where it ends against its head.
func checkEnds(res *boltstore.VerifyResult, anchorSeq uint64, anchorHash string, first *broker.Event) error {
	end := res.PrunedThrough + res.Verified
	if res.Verified == 0 {
		end = anchorSeq
	}
	switch {
	case res.Verified > 0 && res.PrunedThrough != anchorSeq:
		res.FirstBad, res.Problem = anchorSeq+1, fmt.Sprintf("records %d to %d are missing (deleted): the log starts at record %d, the anchor is record %d", anchorSeq+1, res.PrunedThrough, res.PrunedThrough+1, anchorSeq)
	case first != nil && anchorSeq > 0 && first.PrevHash != anchorHash:
		res.FirstBad, res.Problem = first.Seq, fmt.Sprintf("record %d does not link to the anchor's hash (the records after the anchor were rewritten)", first.Seq)
	case end < res.HeadSeq:
		res.FirstBad, res.Problem = end+1, fmt.Sprintf("records %d to %d are missing: the log ends at record %d but latch wrote up to %d (the tail was truncated)", end+1, res.HeadSeq, end, res.HeadSeq)
	case res.Verified > 0 && res.LastHash != res.HeadHash:
		res.FirstBad, res.Problem = end, fmt.Sprintf("record %d does not match the audit head's hash (the last record was rewritten)", end)
	default:
		res.PrunedThrough = anchorSeq
		return nil
	}
	res.Verified = 0
	return fmt.Errorf("verify audit in etcd: %w: %s", boltstore.ErrAuditBroken, res.Problem)
}

// pruneEtcd prunes the chain in etcd through record through, whose hash
// held is in the export that keeps the records: verified first, with it.
func pruneEtcd(c *cli.Context, cfg *EtcdConfig, through uint64, held string) error {
	st, closeStore, err := openEtcdReader(c.Context, cfg)
	if err != nil {
		return err
	}
	defer closeStore()
	res, err := verifyEtcdChain(c.Context, st, []boltstore.Expectation{{Seq: through, Hash: held, Source: "the export " + c.String("export")}})
	if err != nil {
		return fmt.Errorf("not pruned: %w", err)
	}
	from, err := st.PruneAudit(c.Context, through, held)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "pruned records %d to %d in etcd; the chain now starts at record %d (%d records left at the start)\n", from, through, through+1, res.HeadSeq-through)
	return nil
}

// writeEvents writes the events after record after, up to record
// through (0: all), whose time is not before since as JSON lines, as
// ExportAudit does.
func writeEvents(ctx context.Context, st broker.Store, since time.Time, after, through uint64, w io.Writer) error {
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	err := st.Events(ctx, after, func(e broker.Event) (bool, error) {
		if through > 0 && e.Seq > through {
			return false, nil
		}
		if !since.IsZero() && e.Time.Before(since) {
			return true, nil
		}
		return true, enc.Encode(e)
	})
	if err != nil {
		return err
	}
	return bw.Flush()
}
