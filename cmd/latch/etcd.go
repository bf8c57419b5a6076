package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/latchbroker/latch/broker/etcdstore"
	"github.com/latchbroker/latch/notify"
)

// etcdSessionTTL is how long a dead replica's session outlives it: within
// it another replica takes its duties over and reconciles its intents.
const etcdSessionTTL = 10 * time.Second

// etcdStore is the store on etcd with this replica's session: its name
// among the replicas (a key of the session's lease under
// <prefix>/replicas/, gone when the session ends) and its campaign for
// the background duties (<prefix>/duties).
type etcdStore struct {
	*etcdstore.Store
	cli     *clientv3.Client
	session *concurrency.Session
	prefix  string
	replica string // this process's name: host, pid, a random tag
}

// openEtcdStore dials etcd, opens the replica's session and registers the
// replica.
func openEtcdStore(ctx context.Context, cfg *EtcdConfig, log *slog.Logger) (*etcdStore, error) {
	prefix := cmp.Or(cfg.Prefix, "/latch")
	cli, err := dialEtcd(ctx, cfg)
	if err != nil {
		return nil, err
	}
	session, err := concurrency.NewSession(cli, concurrency.WithTTL(int(etcdSessionTTL/time.Second)))
	if err != nil {
		cli.Close()
		return nil, fmt.Errorf("store.etcd: %s: %w", cfg.Endpoints, err)
	}
	e := &etcdStore{cli: cli, session: session, prefix: prefix, replica: replicaName()}
	// Registered before any request is served: an intent's replica is
	// listed for as long as it lives.
	if _, err := cli.Put(ctx, e.replicasKey()+e.replica, time.Now().UTC().Format(time.RFC3339), clientv3.WithLease(session.Lease())); err != nil {
		e.closeSession()
		return nil, fmt.Errorf("store.etcd: register the replica: %w", err)
	}
	if e.Store, err = etcdstore.New(cli, prefix, etcdstore.Options{}); err != nil {
		e.closeSession()
		return nil, err
	}
	if migrating, err := e.Store.Migrating(ctx); err != nil || migrating {
		e.Close()
		return nil, cmp.Or(err, fmt.Errorf("store.etcd: a latch store migrate into %s has not finished: let it end, or delete the prefix and migrate again", prefix))
	}
	log.Info("serving from etcd", "prefix", prefix, "endpoints", cfg.Endpoints, "replica", e.replica)
	return e, nil
}

// dialEtcd is a client of store.etcd: TLS 1.3 when configured, and room
// for the store's largest batches.
func dialEtcd(ctx context.Context, cfg *EtcdConfig) (*clientv3.Client, error) {
	tlsCfg, err := etcdTLS(cfg)
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: cfg.Endpoints, TLS: tlsCfg, DialTimeout: cmp.Or(cfg.DialTimeout, 5*time.Second),
		MaxCallSendMsgSize: etcdstore.ClientMaxSend, Context: ctx})
	if err != nil {
		return nil, fmt.Errorf("store.etcd: %w", err)
	}
	return cli, nil
}

// replicaName names this start of the process: a restarted replica does
// not own what its predecessor had in flight.
func replicaName() string {
	host, _ := os.Hostname()
	tag := make([]byte, 6)
	rand.Read(tag)
	return fmt.Sprintf("%s-%d-%x", cmp.Or(host, "latch"), os.Getpid(), tag)
}

func (e *etcdStore) replicasKey() string { return e.prefix + "/replicas/" }

// liveReplicas names the replicas whose session is alive.
func (e *etcdStore) liveReplicas(ctx context.Context) (map[string]bool, error) {
	res, err := e.cli.Get(ctx, e.replicasKey(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, err
	}
	live := map[string]bool{}
	for _, kv := range res.Kvs {
		live[strings.TrimPrefix(string(kv.Key), e.replicasKey())] = true
	}
	return live, nil
}

// watchGone calls gone each time replicas leave (their sessions ended),
// until ctx ends. A deletion missed while the watch is broken is found by
// the next periodic reconciliation.
func (e *etcdStore) watchGone(ctx context.Context, gone func()) {
	for ctx.Err() == nil {
		for res := range e.cli.Watch(clientv3.WithRequireLeader(ctx), e.replicasKey(), clientv3.WithPrefix(), clientv3.WithFilterPut()) {
			if res.Err() != nil {
				break
			}
			if len(res.Events) > 0 {
				gone()
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// elect waits until this replica is elected to run the duties, and
// returns a context whose writes are fenced by the election: once this
// replica's session ends, they write nothing.
func (e *etcdStore) elect(ctx context.Context) (context.Context, error) {
	el := concurrency.NewElection(e.session, e.prefix+"/duties")
	if err := el.Campaign(ctx, e.replica); err != nil {
		return nil, err
	}
	fence := &etcdstore.Fence{Cmp: clientv3.Compare(clientv3.CreateRevision(el.Key()), "=", el.Rev())}
	return etcdstore.WithFence(ctx, fence), nil
}

// handoff is the webhook outbox's notify.Handoff between the replicas
// that run the duties in turn: <prefix>/notify/done.
func (e *etcdStore) handoff() notify.Handoff {
	return notifyHandoff{cli: e.cli, key: e.prefix + "/notify/done"}
}

type notifyHandoff struct {
	cli *clientv3.Client
	key string
}

func (h notifyHandoff) LoadDone(ctx context.Context) (uint64, bool, error) {
	res, err := h.cli.Get(ctx, h.key)
	if err != nil || len(res.Kvs) == 0 {
		return 0, false, err
	}
	seq, err := strconv.ParseUint(string(res.Kvs[0].Value), 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("%s holds %q, not a sequence number", h.key, res.Kvs[0].Value)
	}
	return seq, true, nil
}

func (h notifyHandoff) SaveDone(ctx context.Context, seq uint64) error {
	_, err := h.cli.Put(ctx, h.key, strconv.FormatUint(seq, 10))
	return err
}

// lost is closed when the replica's session ends (etcd unreachable for
// its TTL).
func (e *etcdStore) lost() <-chan struct{} { return e.session.Done() }

func (e *etcdStore) Close() error {
	err := e.Store.Close()
	e.closeSession()
	return err
}

// closeSession revokes the session's lease at once: the replica leaves
// the list, and its campaign for the duties ends.
func (e *etcdStore) closeSession() {
	e.session.Close()
	e.cli.Close()
}

// etcdTLS is TLS 1.3 to etcd when a CA or a client certificate is set.
func etcdTLS(cfg *EtcdConfig) (*tls.Config, error) {
	if cfg.CACert == "" && cfg.Cert == "" {
		return nil, nil
	}
	t := &tls.Config{MinVersion: tls.VersionTLS13}
	if cfg.CACert != "" {
		pem, err := os.ReadFile(cfg.CACert)
		if err != nil {
			return nil, fmt.Errorf("store.etcd.ca_cert: %w", err)
		}
		t.RootCAs = x509.NewCertPool()
		if !t.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("store.etcd.ca_cert: %s holds no PEM certificate", cfg.CACert)
		}
	}
	if cfg.Cert != "" {
		pair, err := tls.LoadX509KeyPair(cfg.Cert, cfg.Key)
		if err != nil {
			return nil, fmt.Errorf("store.etcd: cert and key: %w", err)
		}
		t.Certificates = []tls.Certificate{pair}
	}
	return t, nil
}
