package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/latchbroker/latch/broker/etcdstore"
)

// etcdLockTTL is how long a dead server's lock outlives it: a standby
// takes over within it.
const etcdLockTTL = 10 * time.Second

// etcdStore is the store on etcd, with the lock that makes this server the
// one that serves: the background duties (expiry, the revocation queue,
// reconciliation) must run on one replica at a time, and until they fail
// over one by one, the whole server does. A second server on the same
// prefix waits as a standby and takes over when the first dies.
type etcdStore struct {
	*etcdstore.Store
	cli     *clientv3.Client
	session *concurrency.Session
}

// openEtcdStore dials etcd and waits for the server lock.
func openEtcdStore(ctx context.Context, cfg *EtcdConfig, log *slog.Logger) (*etcdStore, error) {
	prefix := cfg.Prefix
	if prefix == "" {
		prefix = "/latch"
	}
	tlsCfg, err := etcdTLS(cfg)
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: cfg.Endpoints, TLS: tlsCfg, DialTimeout: cmp.Or(cfg.DialTimeout, 5*time.Second), Context: ctx})
	if err != nil {
		return nil, fmt.Errorf("store.etcd: %w", err)
	}
	session, err := concurrency.NewSession(cli, concurrency.WithTTL(int(etcdLockTTL/time.Second)))
	if err != nil {
		cli.Close()
		return nil, fmt.Errorf("store.etcd: %s: %w", cfg.Endpoints, err)
	}
	lock := concurrency.NewMutex(session, prefix+"/lock/server")
	if err := lock.TryLock(ctx); errors.Is(err, concurrency.ErrLocked) {
		log.Info("another latch server serves this etcd prefix: waiting as a standby", "prefix", prefix)
		err = lock.Lock(ctx)
	}
	if err != nil {
		session.Close()
		cli.Close()
		return nil, fmt.Errorf("store.etcd: take the server lock: %w", err)
	}
	// Every write is fenced by the lock: once it is lost, nothing this
	// server still has in flight is written.
	fence := lock.IsOwner()
	st, err := etcdstore.New(cli, prefix, etcdstore.Options{Fence: &fence})
	if err != nil {
		session.Close()
		cli.Close()
		return nil, err
	}
	log.Info("serving from etcd", "prefix", prefix, "endpoints", cfg.Endpoints)
	return &etcdStore{Store: st, cli: cli, session: session}, nil
}

// lost is closed when the lock's session ends (etcd unreachable for its
// TTL): another server may hold the lock by then, so this one must stop.
func (e *etcdStore) lost() <-chan struct{} { return e.session.Done() }

func (e *etcdStore) Close() error {
	err := e.Store.Close()
	e.session.Close() // releases the lock at once for a standby
	e.cli.Close()
	return err
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
