package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/boltstore"
	"github.com/latchbroker/latch/broker/etcdstore"
	"github.com/latchbroker/latch/broker/storetest"
)

// BenchmarkStore_Issue writes issuance as the Service does — an intent,
// then the lease with its audit event, the intent dropped — from 32
// callers (32 agents) at once, on bbolt and on the three-member etcd
// cluster through one replica and through two (the callers split between
// them, as behind a load balancer). Compare issues/s and p99-ms (both
// Applys of an issue) of the etcd runs with Bolt's in the same run; the
// etcd runs also report the bytes one committed lease takes in etcd
// (record, indexes and audit event; before etcd's own revision history).
func BenchmarkStore_Issue(b *testing.B) {
	b.Run("Bolt", func(b *testing.B) {
		s, err := boltstore.Open(filepath.Join(b.TempDir(), "latch.db"), boltstore.Options{})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		benchIssue(b, []broker.Store{s})
	})
	for _, replicas := range []int{1, 2} {
		b.Run(fmt.Sprintf("Etcd%d", replicas), func(b *testing.B) {
			prefix := fmt.Sprintf("/latch-bench/%d", time.Now().UnixNano())
			var stores []broker.Store
			for range replicas {
				cli, err := st.Etcd.Client()
				if err != nil {
					b.Fatal(err)
				}
				defer cli.Close()
				s, err := etcdstore.New(cli, prefix, etcdstore.Options{})
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				stores = append(stores, s)
			}
			benchIssue(b, stores)
			records, audit := etcdBytes(b, prefix)
			b.ReportMetric(float64(records+audit)/float64(b.N), "bytes/lease")
			b.ReportMetric(float64(audit)/float64(b.N), "audit-bytes/lease")
		})
	}
}

func benchIssue(b *testing.B, stores []broker.Store) {
	const callers = 32
	ctx := context.Background()
	g := storetest.NewIDs()
	b.SetParallelism(callers / runtime.GOMAXPROCS(0))
	var (
		mu   sync.Mutex
		lat  []time.Duration
		next atomic.Int64
	)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		n := int(next.Add(1))
		s, agent := stores[n%len(stores)], fmt.Sprintf("spiffe://example.org/agent/bench-%d", n)
		var mine []time.Duration
		for pb.Next() {
			start := time.Now()
			id := g.Next()
			l := storetest.Lease(id, agent, "report", broker.StatePending, storetest.T0.Add(10*time.Minute))
			if _, err := s.Apply(ctx, broker.Change{PutIntents: []*broker.Lease{l}}); err != nil {
				b.Error(err)
				return
			}
			l.State = broker.StateActive
			if _, err := s.Apply(ctx, broker.Change{DeleteIntents: []string{id}, PutLeases: []*broker.Lease{l},
				Events: []broker.Event{storetest.Ev(broker.EventIssue, id)}}); err != nil {
				b.Error(err)
				return
			}
			mine = append(mine, time.Since(start))
		}
		mu.Lock()
		lat = append(lat, mine...)
		mu.Unlock()
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "issues/s")
	slices.Sort(lat)
	if len(lat) > 0 {
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	}
}

// etcdBytes sums the keys and values under prefix.
func etcdBytes(b *testing.B, prefix string) (records, audit int) {
	cli, err := st.Etcd.Client()
	if err != nil {
		b.Fatal(err)
	}
	defer cli.Close()
	res, err := cli.Get(context.Background(), prefix+"/", clientv3.WithPrefix())
	if err != nil {
		b.Fatal(err)
	}
	for _, kv := range res.Kvs {
		if strings.HasPrefix(string(kv.Key), prefix+"/audit/") {
			audit += len(kv.Key) + len(kv.Value)
		} else {
			records += len(kv.Key) + len(kv.Value)
		}
	}
	return records, audit
}
