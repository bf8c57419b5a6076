package boltstore

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/latchbroker/latch/broker"
)

// BenchmarkApply_Parallel measures issuance as the Service writes it: 32
// callers, each storing an intent, then committing the lease with its audit
// event and dropping the intent. Two Applys per op; issues/s is issuances
// per second, p50/p99 the time of both Applys together.
func BenchmarkApply_Parallel(b *testing.B) {
	for _, v := range []struct {
		name string
		opts Options
	}{
		{"commit/delay=0", Options{}},
		{"commit/delay=250us", Options{BatchDelay: 250 * time.Microsecond}},
	} {
		b.Run(v.name, func(b *testing.B) { benchIssue(b, v.opts, 32, 0) })
	}
}

// BenchmarkApply_WithMint puts a simulated 2 ms Vault call between the
// intent and the commit, as in a real issuance, at several loads: p50/p99
// are the store's share of an issuance (both Applys), what the design's
// "broker overhead" budget (p50 ≤ 2 ms, p99 ≤ 15 ms) has to cover.
func BenchmarkApply_WithMint(b *testing.B) {
	for _, v := range []struct {
		name string
		opts Options
	}{
		{"commit/delay=0", Options{}},
	} {
		for _, callers := range []int{2, 8, 32} {
			b.Run(fmt.Sprintf("%s/callers=%d", v.name, callers), func(b *testing.B) { benchIssue(b, v.opts, callers, 2*time.Millisecond) })
		}
	}
}

func benchIssue(b *testing.B, opts Options, callers int, mint time.Duration) {
	s := openTest(b, opts)
	ctx := context.Background()
	g := newIDs()
	procs := runtime.GOMAXPROCS(0)
	if callers < procs {
		b.Fatalf("callers %d < GOMAXPROCS %d", callers, procs)
	}
	b.SetParallelism((callers + procs - 1) / procs)
	var (
		mu  sync.Mutex
		lat []time.Duration
	)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var mine []time.Duration
		for pb.Next() {
			start := time.Now()
			id := g.Next()
			l := lease(id, "spiffe://example.org/agent/bench", "report", broker.StatePending, t0.Add(10*time.Minute))
			if _, err := s.Apply(ctx, broker.Change{PutIntents: []*broker.Lease{l}}); err != nil {
				b.Error(err)
				return
			}
			store := time.Since(start)
			if mint > 0 {
				time.Sleep(mint)
			}
			start = time.Now()
			l.State = broker.StateActive
			if _, err := s.Apply(ctx, broker.Change{
				DeleteIntents: []string{id},
				PutLeases:     []*broker.Lease{l},
				Events:        []broker.Event{ev(broker.EventIssue, id)},
			}); err != nil {
				b.Error(err)
				return
			}
			mine = append(mine, store+time.Since(start))
		}
		mu.Lock()
		lat = append(lat, mine...)
		mu.Unlock()
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "issues/s")
	reportLatency(b, lat)
}

// BenchmarkApply_Serial is one caller alone: the latency a lone request
// pays (batch delay + one fsync per Apply), the baseline that shows what
// grouping buys under load.
func BenchmarkApply_Serial(b *testing.B) {
	s := openTest(b, Options{})
	ctx := context.Background()
	g := newIDs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		id := g.Next()
		l := lease(id, "a", "t", broker.StateActive, t0.Add(time.Hour))
		if _, err := s.Apply(ctx, broker.Change{PutLeases: []*broker.Lease{l}, Events: []broker.Event{ev(broker.EventIssue, id)}}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "applies/s")
}

func reportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(q(0.50), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
}

// scanLeases is the size of the store the scan, open and reindex
// benchmarks read: 1,000 agents, 50 tasks, one lease in ten active.
// LATCH_BENCH_LEASES=1000000 runs them at the design's million (building
// that file takes minutes, so it is not the default).
var scanLeases = 100_000

func init() {
	if n, err := strconv.Atoi(os.Getenv("LATCH_BENCH_LEASES")); err == nil && n > 0 {
		scanLeases = n
	}
}

// benchFiles are the stores the benchmarks build, once per process each
// (building one takes seconds to minutes), by name.
var benchFiles struct {
	mu    sync.Mutex
	dir   string
	files map[string]*benchFile
}

type benchFile struct {
	once sync.Once
	path string
	err  error
}

// scanDB builds the scan benchmarks' store once per process and returns
// its path: scanLeases leases, one in ten active.
func scanDB(b *testing.B) string {
	return benchDB(b, "scan", scanLeases, func(n int) bool { return (n/1000)%10 == 0 })
}

// benchDB builds the store called name once per process and returns its
// path: n leases of 1,000 agents and 50 tasks, active where active(i)
// says so and revoked otherwise, lease i expiring i seconds after t0.
func benchDB(b *testing.B, name string, n int, active func(i int) bool) string {
	benchFiles.mu.Lock()
	if benchFiles.files == nil {
		benchFiles.files = map[string]*benchFile{}
	}
	f := benchFiles.files[name]
	if f == nil {
		f = &benchFile{}
		benchFiles.files[name] = f
	}
	benchFiles.mu.Unlock()
	f.once.Do(func() { f.path, f.err = buildBenchDB(name, n, active) })
	if f.err != nil {
		b.Fatal(f.err)
	}
	return f.path
}

func buildBenchDB(name string, n int, active func(i int) bool) (string, error) {
	benchFiles.mu.Lock()
	if benchFiles.dir == "" {
		dir, err := os.MkdirTemp("", "boltstore-bench")
		if err != nil {
			benchFiles.mu.Unlock()
			return "", err
		}
		benchFiles.dir = dir
	}
	path := filepath.Join(benchFiles.dir, name+".db")
	benchFiles.mu.Unlock()
	s, err := Open(path, Options{})
	if err != nil {
		return "", err
	}
	defer s.Close()
	g := newIDs()
	for i := 0; i < n; {
		var c broker.Change
		for ; len(c.PutLeases) < 2000 && i < n; i++ {
			st := broker.StateRevoked
			if active(i) {
				st = broker.StateActive
			}
			l := lease(g.Next(), fmt.Sprintf("spiffe://example.org/agent/bot-%d", i%1000), fmt.Sprintf("task-%d", i%50), st, t0.Add(time.Duration(i)*time.Second))
			l.TraceID = "4bf92f3577b34da6a3ce929d0e0e4736"
			c.PutLeases = append(c.PutLeases, l)
		}
		if _, err := s.Apply(context.Background(), c); err != nil {
			return "", err
		}
	}
	return path, nil
}

func TestMain(m *testing.M) {
	code := m.Run()
	if benchFiles.dir != "" {
		os.RemoveAll(benchFiles.dir)
	}
	os.Exit(code)
}

// BenchmarkLeases_Scan reads a store of scanLeases leases. B/lease is heap
// allocated per lease returned (decoding included); the store itself keeps
// no per-lease memory, the file is mapped.
func BenchmarkLeases_Scan(b *testing.B) {
	path := scanDB(b)
	s, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if fi, err := os.Stat(path); err == nil {
		b.Logf("file: %d bytes, %.0f bytes/lease", fi.Size(), float64(fi.Size())/float64(scanLeases))
	}

	run := func(name string, query func() (int, error)) {
		b.Run(name, func(b *testing.B) {
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			total := 0
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				n, err := query()
				if err != nil {
					b.Fatal(err)
				}
				total += n
			}
			b.StopTimer()
			runtime.ReadMemStats(&after)
			if total > 0 {
				b.ReportMetric(float64(total)/float64(b.N), "leases/op")
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(total), "ns/lease")
				b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/float64(total), "B/lease")
			}
		})
	}
	leases := func(f broker.LeaseFilter) func() (int, error) {
		return func() (int, error) {
			ls, err := s.Leases(ctx, f)
			return len(ls), err
		}
	}
	run("All", leases(broker.LeaseFilter{}))
	run("LiveOnly", leases(broker.LeaseFilter{LiveOnly: true}))
	run("Agent", leases(broker.LeaseFilter{Agent: "spiffe://example.org/agent/bot-500"}))
	run("AgentLive", leases(broker.LeaseFilter{Agent: "spiffe://example.org/agent/bot-500", LiveOnly: true}))
	run("TaskLimit50", leases(broker.LeaseFilter{Task: "task-7", Limit: 50}))
	run("ExpiringBefore1000", func() (int, error) {
		ls, err := s.ExpiringBefore(ctx, t0.Add(24*time.Hour), 1000)
		return len(ls), err
	})
}

// BenchmarkOpen opens the scanLeases store and reads the audit head: the
// indexes are stored, so open time and heap do not grow with the leases.
func BenchmarkOpen(b *testing.B) {
	path := scanDB(b)
	var heap uint64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		s, err := Open(path, Options{})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.LastEvent(context.Background()); err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		heap = after.HeapAlloc - min(after.HeapAlloc, before.HeapAlloc)
		s.Close()
	}
	b.ReportMetric(float64(heap)/float64(scanLeases), "heap-B/lease")
}

// BenchmarkDecodeLease is the cost of one stored lease read back: the
// bulk of every scan above.
func BenchmarkDecodeLease(b *testing.B) {
	l := lease(newIDs().Next(), "spiffe://example.org/agent/bot-1", "task-1", broker.StateActive, t0.Add(time.Hour))
	l.TraceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	v, _ := json.Marshal(l)
	b.SetBytes(int64(len(v)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := decode[broker.Lease]("bench", v); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReindex compares rebuilding every index of the scanLeases store
// with a raw scan that decodes every lease, the design's yardstick
// (rebuild ≤ 1.5× raw scan). It works on a copy of the file.
func BenchmarkReindex(b *testing.B) {
	src := scanDB(b)
	path := filepath.Join(b.TempDir(), "latch.db")
	if err := copyTo(src, path); err != nil {
		b.Fatal(err)
	}
	b.Run("RawScan", func(b *testing.B) {
		s, err := Open(path, Options{ReadOnly: true})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			n := 0
			err := s.db.View(func(tx *bolt.Tx) error {
				return tx.Bucket(bktLeases).ForEach(func(k, v []byte) error {
					_, err := decode[broker.Lease]("scan", v)
					n++
					return err
				})
			})
			if err != nil || n != scanLeases {
				b.Fatalf("scan: %d leases, %v", n, err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*scanLeases), "ns/lease")
	})
	b.Run("Reindex", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if err := Reindex(path, nil); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*scanLeases), "ns/lease")
	})
}

func copyTo(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// BenchmarkApply_Revoke10k is the store's part of revoking 10,000 leases
// of one agent (quarantine): one change marks them revoking and queues
// them, then the confirmations come back in changes of 100 that mark them
// revoked, dequeue them and record an event each.
func BenchmarkApply_Revoke10k(b *testing.B) {
	const n = 10_000
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		s := openTest(b, Options{})
		g := newIDs()
		var ls []*broker.Lease
		for len(ls) < n {
			var c broker.Change
			for j := 0; j < 1000; j++ {
				l := lease(g.Next(), "spiffe://example.org/agent/rogue", fmt.Sprintf("task-%d", j%5), broker.StateActive, t0.Add(time.Hour))
				ls = append(ls, l)
				c.PutLeases = append(c.PutLeases, l)
			}
			apply(b, s, c)
		}
		b.StartTimer()

		var c broker.Change
		for _, l := range ls {
			l.State = broker.StateRevoking
			c.PutLeases = append(c.PutLeases, l)
			c.Enqueue = append(c.Enqueue, broker.Revocation{LeaseID: l.ID, Reason: "quarantine", Actor: "ops", NextAttempt: t0})
		}
		c.Events = []broker.Event{ev(broker.EventQuarantine, "")}
		apply(b, s, c)
		for k := 0; k < n; k += 100 {
			var done broker.Change
			for _, l := range ls[k : k+100] {
				l.State, l.EndedAt = broker.StateRevoked, t0
				done.PutLeases = append(done.PutLeases, l)
				done.Dequeue = append(done.Dequeue, l.ID)
				done.Events = append(done.Events, ev(broker.EventRevoked, l.ID))
			}
			apply(b, s, done)
		}
		b.StopTimer()
		if d, _ := s.QueueDepth(ctx); d != 0 {
			b.Fatalf("queue depth %d after revoking all", d)
		}
		s.Close()
	}
}

// BenchmarkFdatasync is the floor under every durable commit on this
// machine: one 4 KiB page written and fdatasync'd, as bbolt's smallest
// commit does (twice: pages, then meta). Its cpu-ms/op is CPU time the
// kernel spends for the process (on a virtual disk it is far from free);
// an issue's two commits cost twice that divided by the commits' batch.
func BenchmarkFdatasync(b *testing.B) {
	f, err := os.Create(filepath.Join(b.TempDir(), "sync"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	page := make([]byte, 4096)
	start := processCPU(b)
	b.ResetTimer()
	for i := range b.N {
		if _, err := f.WriteAt(page, int64(i%1024)*4096); err != nil {
			b.Fatal(err)
		}
		if err := syscall.Fdatasync(int(f.Fd())); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(processCPU(b)-start)/float64(time.Millisecond)/float64(b.N), "cpu-ms/op")
}

// processCPU is the CPU time (user and system) this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkApply_Issue is the store's part of BenchmarkIssue_LatchJWT in
// integration/server, written as the Service writes it: 32 agents, 16
// callers, each issue an intent with the budget and state conditions,
// 1 ms for the mint, then the commit with the agent's use, the group and
// the intent conditions and its audit event. cpu-ms/op is the process's
// CPU per issue (the store's and the callers'), pages/tx and tx/op what
// bbolt wrote: each page a transaction touches is read into memory and
// written out again.
func BenchmarkApply_Issue(b *testing.B) {
	s := openTest(b, Options{})
	ctx := context.Background()
	g := newIDs()
	const agents = 32
	b.SetParallelism(8) // 2 cores × 8 = 16 callers
	var n atomic.Int64
	before, commits, start := s.db.Stats(), s.c.commits.Load(), processCPU(b)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := g.Next()
			agent := fmt.Sprintf("spiffe://example.org/agent/bench-%d", n.Add(1)%agents)
			l := lease(id, agent, "close-ticket", broker.StatePending, t0.Add(10*time.Minute))
			l.Refs = broker.Refs{Policy: "latch-p-0123456789abcdef", Group: "g-" + agent}
			cond := &broker.Conditions{Agent: agent, NotFrozen: true, Template: "close-ticket"}
			if _, err := s.Apply(ctx, broker.Change{PutIntents: []*broker.Lease{l}, Conditions: cond}); err != nil {
				b.Error(err)
				return
			}
			time.Sleep(time.Millisecond)
			l.State, l.Refs.TokenAccessor = broker.StateActive, "acc-"+id
			if _, err := s.Apply(ctx, broker.Change{
				DeleteIntents: []string{id},
				PutLeases:     []*broker.Lease{l},
				Uses:          []broker.Use{{Agent: agent, Template: "close-ticket", At: t0}},
				Events:        []broker.Event{ev(broker.EventIssue, id)},
				Conditions:    &broker.Conditions{Agent: agent, NotFrozen: true, Group: l.Refs.Group, Intent: id},
			}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	after := s.db.Stats()
	cpu, d, txs := processCPU(b)-start, after.Sub(&before), float64(s.c.commits.Load()-commits)
	b.ReportMetric(float64(cpu)/float64(time.Millisecond)/float64(b.N), "cpu-ms/op")
	b.ReportMetric(float64(d.TxStats.GetWrite())/txs, "pages/tx")
	b.ReportMetric(txs/float64(b.N), "tx/op")
}
