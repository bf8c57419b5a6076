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
	clientv3 "go.etcd.io/etcd/client/v3"

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
	tlsCfg, err := etcdTLS(cfg)
	if err != nil {
		return nil, nil, err
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: cfg.Endpoints, TLS: tlsCfg, DialTimeout: cmp.Or(cfg.DialTimeout, 5*time.Second),
		MaxCallSendMsgSize: etcdstore.ClientMaxSend, Context: ctx})
	if err != nil {
		return nil, nil, fmt.Errorf("store.etcd: %w", err)
	}
	st, err := etcdstore.New(cli, cmp.Or(cfg.Prefix, "/latch"), etcdstore.Options{})
	if err != nil {
		cli.Close()
		return nil, nil, err
	}
	return st, func() { st.Close(); cli.Close() }, nil
}

// verifyEtcd verifies the chain in etcd as an export is verified, up to
// the audit head as it stood when it started (replicas may append
// meanwhile): from record 1 (etcd's log is not pruned), each record's
// link and hash, and the last against the head.
func verifyEtcd(c *cli.Context, cfg *EtcdConfig, expect []boltstore.Expectation) error {
	ctx := c.Context
	st, closeStore, err := openEtcdReader(ctx, cfg)
	if err != nil {
		return err
	}
	defer closeStore()
	headSeq, headHash, err := st.Head(ctx)
	if err != nil {
		return err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeEvents(ctx, st, time.Time{}, headSeq, pw)) }()
	res, err := boltstore.VerifyExport(bufio.NewReader(pr), expect...)
	pr.Close()
	res.HeadSeq, res.HeadHash = headSeq, headHash
	if err == nil {
		err = checkEnd(&res)
	}
	return reportVerify(c, res, err)
}

// checkEnd checks where a verified log starts and ends against its head.
func checkEnd(res *boltstore.VerifyResult) error {
	end := res.PrunedThrough + res.Verified
	switch {
	case res.PrunedThrough > 0:
		res.FirstBad, res.Problem = 1, fmt.Sprintf("records 1 to %d are missing (deleted): the log starts at record %d", res.PrunedThrough, res.PrunedThrough+1)
	case end < res.HeadSeq:
		res.FirstBad, res.Problem = end+1, fmt.Sprintf("records %d to %d are missing: the log ends at record %d but latch wrote up to %d (the tail was truncated)", end+1, res.HeadSeq, end, res.HeadSeq)
	case end > 0 && res.LastHash != res.HeadHash:
		res.FirstBad, res.Problem = end, fmt.Sprintf("record %d does not match the audit head's hash (the last record was rewritten)", end)
	default:
		return nil
	}
	res.Verified = 0
	return fmt.Errorf("verify audit in etcd: %w: %s", boltstore.ErrAuditBroken, res.Problem)
}

// writeEvents writes the events up to record through (0: all) whose
// time is not before since as JSON lines, as ExportAudit does.
func writeEvents(ctx context.Context, st broker.Store, since time.Time, through uint64, w io.Writer) error {
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	err := st.Events(ctx, 0, func(e broker.Event) (bool, error) {
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
