package stack

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// EtcdMembers is the size of the cluster WithEtcd starts: the smallest
// that keeps a quorum when one member dies.
const EtcdMembers = 3

// Etcd is a cluster of EtcdMembers etcd servers on 127.0.0.1, plain HTTP,
// each with its own data directory. Kill and Restart take one member down
// (SIGKILL, no goodbye to its peers) and bring it back with its data, as a
// crash and a restart would.
type Etcd struct {
	bin, dir string
	members  []etcdMember
	cluster  string // --initial-cluster

	mu    sync.Mutex
	procs []*process // nil while a member is down
}

type etcdMember struct {
	name             string
	client, peer     string // URLs
	dataDir, logName string
}

func startEtcd(ctx context.Context, dir string) (*Etcd, error) {
	bin, err := tool("etcd")
	if err != nil {
		return nil, err
	}
	e := &Etcd{bin: bin, dir: dir, procs: make([]*process, EtcdMembers)}
	var peers []string
	for i := range EtcdMembers {
		cport, err := FreePort(false)
		if err != nil {
			return nil, err
		}
		pport, err := FreePort(false)
		if err != nil {
			return nil, err
		}
		m := etcdMember{
			name:    "m" + strconv.Itoa(i),
			client:  "http://127.0.0.1:" + strconv.Itoa(cport),
			peer:    "http://127.0.0.1:" + strconv.Itoa(pport),
			dataDir: filepath.Join(dir, "m"+strconv.Itoa(i)),
			logName: "etcd-m" + strconv.Itoa(i),
		}
		e.members = append(e.members, m)
		peers = append(peers, m.name+"="+m.peer)
	}
	e.cluster = strings.Join(peers, ",")
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for i := range e.members {
		if err := e.launch(i, "new"); err != nil {
			e.stop()
			return nil, err
		}
	}
	if err := e.waitHealthy(ctx); err != nil {
		e.stop()
		return nil, err
	}
	return e, nil
}

// launch starts member i; state is etcd's --initial-cluster-state (new
// on the first start, existing on a restart over its data directory).
func (e *Etcd) launch(i int, state string) error {
	m := e.members[i]
	p, err := startProcess(e.dir, m.logName, nil, nil, e.bin,
		"--name", m.name,
		"--data-dir", m.dataDir,
		"--listen-client-urls", m.client, "--advertise-client-urls", m.client,
		"--listen-peer-urls", m.peer, "--initial-advertise-peer-urls", m.peer,
		"--initial-cluster", e.cluster, "--initial-cluster-state", state,
		"--initial-cluster-token", "latch-test",
		// What the etcd store needs (see broker/etcdstore): a bulk
		// revocation writes hundreds of leases in one transaction.
		"--max-txn-ops", "10000", "--max-request-bytes", strconv.Itoa(10<<20),
		"--log-level", "warn",
	)
	if err != nil {
		return err
	}
	e.mu.Lock()
	e.procs[i] = p
	e.mu.Unlock()
	return nil
}

// Endpoints are the client URLs of every member, down or not.
func (e *Etcd) Endpoints() []string {
	var eps []string
	for _, m := range e.members {
		eps = append(eps, m.client)
	}
	return eps
}

// Client returns a client of the whole cluster; the caller closes it.
func (e *Etcd) Client() (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{Endpoints: e.Endpoints(), DialTimeout: 5 * time.Second})
}

// Leader returns the index of the member that leads, as its peers see it.
func (e *Etcd) Leader(ctx context.Context) (int, error) {
	c, err := e.Client()
	if err != nil {
		return -1, err
	}
	defer c.Close()
	var last error
	for i, m := range e.members {
		if !e.Running(i) {
			continue
		}
		st, err := c.Status(ctx, m.client)
		if err != nil {
			last = err
			continue
		}
		if st.Header.MemberId == st.Leader {
			return i, nil
		}
	}
	return -1, fmt.Errorf("stack: etcd: no member says it leads (last error: %v)", last)
}

// Running reports whether member i's process is up.
func (e *Etcd) Running(i int) bool {
	e.mu.Lock()
	p := e.procs[i]
	e.mu.Unlock()
	if p == nil {
		return false
	}
	dead, _ := p.exited()
	return !dead
}

// Kill ends member i with SIGKILL.
func (e *Etcd) Kill(i int) {
	e.mu.Lock()
	p := e.procs[i]
	e.procs[i] = nil
	e.mu.Unlock()
	if p == nil {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// Restart starts a killed member again over its data directory and waits
// until the cluster is healthy.
func (e *Etcd) Restart(ctx context.Context, i int) error {
	if e.Running(i) {
		return fmt.Errorf("stack: etcd member %d is running", i)
	}
	if err := e.launch(i, "existing"); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	return e.waitHealthy(ctx)
}

// waitHealthy waits until every running member answers a linearizable
// read, which needs a leader and a quorum.
func (e *Etcd) waitHealthy(ctx context.Context) error {
	c, err := e.Client()
	if err != nil {
		return fmt.Errorf("stack: etcd client: %w", err)
	}
	defer c.Close()
	for i, m := range e.members {
		if !e.Running(i) {
			continue
		}
		e.mu.Lock()
		p := e.procs[i]
		e.mu.Unlock()
		err := waitFor(ctx, p, "etcd "+m.name, func(ctx context.Context) error {
			rctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			if _, err := c.Status(rctx, m.client); err != nil {
				return err
			}
			_, err := c.Get(clientv3.WithRequireLeader(rctx), "stack-ready")
			return err
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func (e *Etcd) stop() {
	e.mu.Lock()
	procs := append([]*process(nil), e.procs...)
	e.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range procs {
		if p != nil {
			wg.Add(1)
			go func() { defer wg.Done(); p.stop(10 * time.Second) }()
		}
	}
	wg.Wait()
}
