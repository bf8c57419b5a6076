package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/boltstore"
	"github.com/latchbroker/latch/broker/etcdstore"
)

func storeCommand() *cli.Command {
	return &cli.Command{
		Name:  "store",
		Usage: "move latch's state from one store to another",
		Subcommands: []*cli.Command{{
			Name:  "migrate",
			Usage: "copy a bbolt file into an empty etcd prefix, offline",
			UsageText: "latch store migrate --from bolt:FILE --to etcd:ENDPOINT[,ENDPOINT...]\n" +
				"   [--prefix /latch] [--ca-cert FILE] [--cert FILE --key FILE]",
			Description: "Copies everything the bbolt file holds — leases and intents with their\n" +
				"indexes, the revocation queue, agents, the freeze, approvals, grants, the\n" +
				"marks of shared policies and retired groups, and the audit chain with its\n" +
				"sequence numbers and hashes, so that it verifies and its checkpoints still\n" +
				"hold — into an etcd prefix that holds nothing, then verifies the chain there.\n" +
				"The file must not be in use: stop the server first (migrate refuses a file\n" +
				"a server holds). The prefix must be empty: migrate refuses one with any key.\n" +
				"Until it ends the prefix is marked migrating and no server serves from it;\n" +
				"if it fails part way, delete the prefix (etcdctl del --prefix PREFIX) and run\n" +
				"it again. A log pruned with latch audit prune goes with its anchor.\n" +
				"Then start the servers with store.etcd on the same endpoints and prefix.",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "from", Required: true, Usage: "bolt:FILE, the store.path of the stopped server"},
				&cli.StringFlag{Name: "to", Required: true, Usage: "etcd:ENDPOINT[,ENDPOINT...], the cluster of store.etcd"},
				&cli.StringFlag{Name: "prefix", Value: "/latch", Usage: "the store.etcd prefix"},
				&cli.StringFlag{Name: "ca-cert", Usage: "the CA of etcd's certificates (TLS 1.3)"},
				&cli.StringFlag{Name: "cert", Usage: "a client certificate for etcd"},
				&cli.StringFlag{Name: "key", Usage: "its key"},
				&cli.DurationFlag{Name: "dial-timeout", Value: 5 * time.Second, Usage: "how long to wait for etcd"},
			},
			Action: runStoreMigrate,
		}},
	}
}

func runStoreMigrate(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	file, ok := strings.CutPrefix(c.String("from"), "bolt:")
	if !ok || file == "" {
		return fmt.Errorf("--from %q: want bolt:FILE", c.String("from"))
	}
	endpoints, ok := strings.CutPrefix(c.String("to"), "etcd:")
	if !ok || endpoints == "" {
		return fmt.Errorf("--to %q: want etcd:ENDPOINT[,ENDPOINT...]", c.String("to"))
	}
	src, err := boltstore.Open(file, boltstore.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return fmt.Errorf("--from %s: %w (a running latch server holds its file: stop it first)", file, err)
	}
	defer src.Close()
	ec := &EtcdConfig{Endpoints: strings.Split(endpoints, ","), Prefix: c.String("prefix"), CACert: c.String("ca-cert"),
		Cert: c.String("cert"), Key: c.String("key"), DialTimeout: c.Duration("dial-timeout")}
	dst, closeDst, err := openEtcdReader(c.Context, ec)
	if err != nil {
		return err
	}
	defer closeDst()
	snap, err := snapshotOf(c.Context, src)
	if err != nil {
		return fmt.Errorf("read %s: %w", file, err)
	}
	n, err := dst.Import(c.Context, snap, func(fn func(broker.Event) error) error {
		return src.Events(c.Context, 0, func(e broker.Event) (bool, error) { return true, fn(e) })
	})
	if errors.Is(err, etcdstore.ErrNotEmpty) {
		return fmt.Errorf("%w: migrate copies into an empty prefix only", err)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "copied %d leases, %d intents, %d queued revocations, %d agents, %d approvals and the audit chain up to record %d into %s\n",
		n.Leases, n.Intents, n.Revocations, n.Agents, n.Approvals, n.Events, ec.Prefix)
	return verifyEtcd(c, ec, nil)
}

// snapshotOf reads everything but the audit log from st.
func snapshotOf(ctx context.Context, st *boltstore.Store) (snap etcdstore.Snapshot, err error) {
	reads := []func() error{
		func() (err error) { snap.Leases, err = st.Leases(ctx, broker.LeaseFilter{}); return err },
		func() (err error) { snap.Intents, err = st.Intents(ctx); return err },
		func() (err error) {
			snap.Queue, err = st.DueRevocations(ctx, time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC), 0)
			return err
		},
		func() (err error) { snap.Agents, err = st.Agents(ctx); return err },
		func() (err error) { snap.Freeze, err = st.Freeze(ctx); return err },
		func() (err error) { snap.Approvals, err = st.Approvals(ctx, broker.ApprovalFilter{}); return err },
		func() (err error) { snap.Grants, err = st.Grants(ctx); return err },
		func() error {
			use, err := st.PolicyUse(ctx)
			snap.Deleting = use.Deleting
			return err
		},
		func() (err error) { snap.Retired, err = st.RetiredGroups(ctx); return err },
	}
	for _, read := range reads {
		if err := read(); err != nil {
			return snap, err
		}
	}
	return snap, nil
}
