package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/latchbroker/latch/broker/boltstore"
)

func auditCommand() *cli.Command {
	dbFlag := &cli.StringFlag{
		Name:  "db",
		Usage: "the latch database file (default: store.path of --config; with store.etcd, the log in etcd)",
	}
	return &cli.Command{
		Name:  "audit",
		Usage: "tail, verify or export the hash-chained audit log",
		Subcommands: []*cli.Command{
			{
				Name:  "verify",
				Usage: "check every audit record's hash chain, offline, against checkpoints kept elsewhere",
				UsageText: "latch audit verify [--db FILE | --config FILE | --export FILE]\n" +
					"   [--checkpoint FILE --bundle FILE] [--expect SEQ:HASH]...",
				Description: "Opens the database read-only (or reads an export) and checks each record's\n" +
					"sequence number, link to the previous record and own hash, then the end of\n" +
					"the log against the head latch wrote last. Any edit, deletion, reordering or\n" +
					"truncated tail is reported with the first record that fails; the exit status\n" +
					"is then 1. Run it on a copy while the server holds the file. With a\n" +
					"--config whose store is store.etcd it reads the log from etcd, up to the\n" +
					"head as it stands when it starts, while the replicas serve.\n\n" +
					"The head lives in the same file: whoever can rewrite the file can cut the\n" +
					"tail and move the head back. A checkpoint kept elsewhere catches that:\n" +
					"--checkpoint reads signed checkpoints (one JWS a line, as latch writes them\n" +
					"to audit.checkpoint_file, its log and checkpoint events), checks each\n" +
					"signature against --bundle (the SPIFFE trust bundle, JSON or PEM; default\n" +
					"spiffe.bundle of --config), and the chain must reach and agree with each.\n" +
					"--expect SEQ:HASH does the same with a hash you kept yourself.",
				Flags: []cli.Flag{dbFlag, configFlagFor(),
					&cli.StringFlag{Name: "export", Usage: "verify this export (latch audit export's JSON lines) instead of a database"},
					&cli.StringFlag{Name: "checkpoint", Usage: "a file of signed checkpoints the chain must reach and agree with"},
					&cli.StringFlag{Name: "bundle", Usage: "the trust bundle (SPIFFE JSON or PEM) that checkpoints are signed under"},
					&cli.StringSliceFlag{Name: "expect", Usage: "SEQ:HASH: record SEQ must exist and have this hash (repeatable)"}},
				Action: runAuditVerify,
			},
			{
				Name:      "prune",
				Usage:     "delete the audit records up to one that an export holds, offline",
				UsageText: "latch audit prune --through SEQ --export FILE [--db FILE | --config FILE]",
				Description: "Verifies the chain, then deletes records 1 to SEQ and keeps record SEQ's\n" +
					"hash as the anchor the rest of the chain links to, so that latch audit\n" +
					"verify still verifies what is left. --export names the export that keeps\n" +
					"the pruned records (latch audit export > FILE): prune refuses unless it\n" +
					"verifies and holds record SEQ with the same hash, so nothing is lost. The\n" +
					"server must be stopped: prune needs the file for itself. With a --config\n" +
					"whose store is store.etcd it prunes the log in etcd while the replicas\n" +
					"serve.",
				Flags: []cli.Flag{dbFlag, configFlagFor(),
					&cli.Uint64Flag{Name: "through", Required: true, Usage: "the last record to delete"},
					&cli.StringFlag{Name: "export", Required: true, Usage: "the export that holds the records to delete"}},
				Action: runAuditPrune,
			},
			{
				Name:      "export",
				Usage:     "write audit records as JSON lines, offline",
				UsageText: "latch audit export [--db FILE | --config FILE] [--since RFC3339]",
				Flags: []cli.Flag{dbFlag, configFlagFor(),
					&cli.TimestampFlag{Name: "since", Layout: time.RFC3339, Usage: "only records at or after this time (RFC 3339)"}},
				Action: runAuditExport,
			},
			auditTailCommand(),
		},
	}
}

// dbPath is --db, or the store path of the config.
func dbPath(c *cli.Context) (string, error) {
	if err := noArgs(c); err != nil {
		return "", err
	}
	if p := c.String("db"); p != "" {
		return p, nil
	}
	cfg, err := LoadConfig(c.String("config"))
	if err != nil {
		return "", fmt.Errorf("no --db given and the config does not load: %w", err)
	}
	if cfg.Store.Path == "" {
		return "", errors.New("no --db given and the config has no store.path")
	}
	return cfg.Store.Path, nil
}

func runAuditVerify(c *cli.Context) error {
	expect, err := expectations(c)
	if err != nil {
		return err
	}
	if f := c.String("export"); f != "" {
		return verifyExport(c, f, expect)
	}
	if ec := etcdOfConfig(c); ec != nil {
		return verifyEtcd(c, ec, expect)
	}
	path, err := dbPath(c)
	if err != nil {
		return err
	}
	var lastShown time.Time
	progress := func(done, total uint64) {
		// Large chains take a while: a line a second on stderr.
		if time.Since(lastShown) >= time.Second || done == total {
			fmt.Fprintf(c.App.ErrWriter, "verified %d of %d records\n", done, total)
			lastShown = time.Now()
		}
	}
	res, err := boltstore.VerifyAudit(path, progress, expect...)
	return reportVerify(c, res, err)
}

// reportVerify prints a verification's result; a broken chain exits 1.
func reportVerify(c *cli.Context, res boltstore.VerifyResult, err error) error {
	if errors.Is(err, boltstore.ErrAuditBroken) {
		fmt.Fprintf(c.App.Writer, "FAILED: %v\n%d records verified before it\n", err, res.Verified)
		return cli.Exit("", 1)
	}
	if err != nil {
		return err
	}
	from := ""
	if res.PrunedThrough > 0 {
		from = fmt.Sprintf(" (from record %d: the records before were pruned)", res.PrunedThrough+1)
	}
	fmt.Fprintf(c.App.Writer, "ok: %d records%s, chain intact, last hash %s\n", res.Verified, from, res.LastHash)
	for _, x := range res.Checked {
		fmt.Fprintf(c.App.Writer, "ok: record %d agrees with %s\n", x.Seq, x.Source)
	}
	return nil
}

func runAuditExport(c *cli.Context) error {
	var since time.Time
	if t := c.Timestamp("since"); t != nil {
		since = *t
	}
	if ec := etcdOfConfig(c); ec != nil {
		st, closeStore, err := openEtcdReader(c.Context, ec)
		if err != nil {
			return err
		}
		defer closeStore()
		return writeEvents(c.Context, st, since, 0, 0, c.App.Writer)
	}
	path, err := dbPath(c)
	if err != nil {
		return err
	}
	if _, err := os.Stat(path); err != nil {
		return err
	}
	return boltstore.ExportAudit(path, since, c.App.Writer)
}
