package server

// Benchmarks of DESIGN.md's "Performance" targets that need the whole
// server: a built `latch server` over its TLS API, side by side with what
// a user would do against the same Vault without latch. Everything runs on
// one machine — latch, Vault, SPIRE and the callers share its cores — so
// compare the pairs, not the absolute numbers.
//
//	go test ./integration/server -run '^$' -bench . -benchmem
//
// Reading the numbers:
//
//   - Throughput: BenchmarkIssue_LatchJWT vs BenchmarkVaultJWTLogin, both
//     with benchCallers concurrent callers and the same benchAgents agents'
//     JWT-SVIDs. Targets (issue 14): ≥ 0.6 × on the shared cores, ≥ 0.9 ×
//     with Vault pinned to one core and the rest to the other (make
//     bench-pinned, LATCH_BENCH_PIN=1). Their vault-cpu-ms/op and
//     latch-cpu-ms/op give the CPU per issue and per login.
//     BenchmarkVaultTokenCreate/Latch is latch's one Vault call made
//     without latch: the floor under Vault's CPU per issue (/Root is the
//     bare create).
//   - Broker overhead at half load: BenchmarkOverhead/Latch vs
//     BenchmarkOverhead/VaultTokenCreate, both paced at the same rate, half
//     of the issues/s latch sustains on this machine (logged; the ops/s
//     metric of both shows the rate they got). The overhead is the
//     difference of the p50-ms (target ≤ 2 ms) and of the p99-ms (target
//     ≤ 15 ms) metrics.
//     VaultTokenCreate is the bare mint call: one auth/token/create with a
//     shared policy, the root token, plain HTTP. Latch's side includes
//     everything latch adds: TLS, JWT-SVID verification, policy evaluation,
//     the shared Vault policy (written once), the audited store commits.
//     BenchmarkOverhead/VaultJWTLogin is the agents' login at the same
//     rate: Vault's CPU per request depends on its load, so its
//     vault-cpu-ms/op against Latch's compares Vault's CPU per issue with
//     a login's at equal load (BenchmarkVaultJWTLogin runs Vault at its
//     own, higher, saturated rate).
//   - Revocation: BenchmarkRevoke10k_Latch/{All,Agent,Template} vs
//     BenchmarkRevoke10k_VaultPrefix (ns/op, and the revoke-s metric).
//     Target: Latch ≤ 1.0 × VaultPrefix.
//   - Database credentials: BenchmarkDBCreds/Latch vs /VaultRead, p50-ms.
//     Target: Latch ≤ 1.1 × the bare read.
//     Their *-cpu-ms/op metrics are the CPU time of the last op's revoke.
//     One op revokes 10,000 leases; at the default -benchtime b.N stays 1
//     (pass -benchtime 1x to be sure).
//
// The *-cpu-ms/op metrics are the CPU time the latch and Vault processes
// spent per op: with every process on the same cores, throughput is
// bounded by their sum. Issue benchmarks also log latch's own histograms
// (HTTP request, each Vault call) to show where an issue's time goes.
//
// Each benchmark revokes what it made before it returns (with the timer
// stopped), so no token of a benchmark is left for Vault's expiry to work
// through while the next one runs.

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/latchbroker/latch/backends/vaulttoken"
	"github.com/latchbroker/latch/broker/api"
	"github.com/latchbroker/latch/integration/vaultenv"
)

const (
	// benchAgents distinct agent SPIFFE IDs under agentPrefix call in
	// every benchmark.
	benchAgents = 32
	// benchCallers concurrent callers at full load.
	benchCallers = 16

	// Vault set-up of the baselines, beside vaultenv's.
	benchJWTMount    = "jwt-bench"          // JWT auth for the agents' JWT-SVIDs
	benchJWTRole     = "agent"              // its role
	benchVaultAud    = "vault"              // the audience of the agents' JWT-SVIDs for Vault
	benchPolicy      = "bench-ticket"       // what an agent's Vault token may do
	benchMintRole    = "bench-mint"         // token role of BenchmarkOverhead's bare mint
	benchRevokeRole  = "bench-revoke"       // token role of BenchmarkRevoke10k_VaultPrefix
	benchLatchPolicy = "latch-bench-ticket" // benchPolicy under a name latch's token role allows
	benchTicketBody  = `{"task":"close-ticket","params":{"ticket":"42"},"reason":"benchmark"}`
	benchRevokeCount = 10_000
)

// JWT-SVIDs live benchJWTTTL (latch accepts at most 5 minutes) and are
// minted again when older than benchJWTRefresh, so that none expires
// during a run.
const (
	benchJWTTTL     = 5 * time.Minute
	benchJWTRefresh = 2 * time.Minute
)

var benchSetup struct {
	once        sync.Once
	err         error
	vaultClient *http.Client

	// Written by benchEnv only, read by the callers it starts.
	mintedAt  time.Time
	latchJWTs []string // one per agent, audience latchID
	vaultJWTs []string // the same agents, audience benchVaultAud
}

// benchEnv sets Vault's JWT auth and token roles up, once for the package
// (a benchmark function runs several times as b.N grows), and mints the
// agents' JWT-SVIDs with SPIRE when they are missing or old.
func benchEnv(b *testing.B) {
	b.Helper()
	e := setup(b)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if time.Since(benchSetup.mintedAt) > benchJWTRefresh {
		var err1, err2 error
		benchSetup.mintedAt = time.Now()
		benchSetup.latchJWTs, err1 = mintAgentJWTs(ctx, latchID.String())
		benchSetup.vaultJWTs, err2 = mintAgentJWTs(ctx, benchVaultAud)
		if err := errors.Join(err1, err2); err != nil {
			benchSetup.mintedAt = time.Time{}
			b.Fatalf("mint the agents' JWT-SVIDs: %v", err)
		}
	}
	benchSetup.once.Do(func() {
		benchSetup.err = func() error {
			if err := pinVault(); err != nil {
				return err
			}
			// The JWT-SVID signing keys from SPIRE's bundle: Vault verifies
			// the same tokens latch does, with the same keys.
			bundle, err := st.SPIRE.Bundle(ctx)
			if err != nil {
				return err
			}
			var keys []string
			for _, k := range bundle.JWTAuthorities() {
				der, err := x509.MarshalPKIXPublicKey(k)
				if err != nil {
					return err
				}
				keys = append(keys, string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})))
			}
			if len(keys) == 0 {
				return errors.New("SPIRE's bundle has no JWT authority")
			}
			root := e.Root
			if err := root.Sys().PutPolicyWithContext(ctx, benchPolicy,
				`path "secret/data/tickets/*" { capabilities = ["read"] }`); err != nil {
				return err
			}
			if err := root.Sys().PutPolicyWithContext(ctx, benchLatchPolicy,
				`path "secret/data/tickets/*" { capabilities = ["read"] }`); err != nil {
				return err
			}
			if err := root.Sys().EnableAuthWithOptionsWithContext(ctx, benchJWTMount, &vaultapi.EnableAuthOptions{Type: "jwt"}); err != nil {
				return err
			}
			for path, data := range map[string]map[string]any{
				"auth/" + benchJWTMount + "/config": {"jwt_validation_pubkeys": keys},
				"auth/" + benchJWTMount + "/role/" + benchJWTRole: {
					"role_type": "jwt", "user_claim": "sub", "bound_audiences": benchVaultAud,
					"bound_claims_type": "glob", "bound_claims": map[string]any{"sub": agentPrefix + "*"},
					"token_policies": benchPolicy, "token_no_default_policy": true, "token_ttl": "5m",
				},
				"auth/token/roles/" + benchMintRole: {
					"orphan": true, "token_type": "service", "allowed_policies": benchPolicy, "token_no_default_policy": true,
				},
				"auth/token/roles/" + benchRevokeRole: {
					"orphan": true, "token_type": "service", "allowed_policies": benchPolicy, "token_no_default_policy": true,
				},
			} {
				if _, err := root.Logical().WriteWithContext(ctx, path, data); err != nil {
					return fmt.Errorf("write %s: %w", path, err)
				}
			}
			benchSetup.vaultClient = benchHTTPClient(&http.Transport{})
			return nil
		}()
	})
	if benchSetup.err != nil {
		b.Fatalf("benchmark set-up: %v", benchSetup.err)
	}
}

// pinVault, when LATCH_BENCH_PIN is set (make bench-pinned), puts Vault
// on CPU 0 and this process, with the latch servers it starts (they
// inherit it), on CPU 1: the layout of production, where latch and Vault
// run on different hosts, on a two-core machine.
func pinVault() error {
	if os.Getenv("LATCH_BENCH_PIN") == "" {
		return nil
	}
	for _, pin := range [][]string{{"0", strconv.Itoa(st.Vault.Pid())}, {"1", strconv.Itoa(os.Getpid())}} {
		if out, err := exec.Command("taskset", "-a", "-cp", pin[0], pin[1]).CombinedOutput(); err != nil {
			return fmt.Errorf("taskset -a -cp %s %s: %v: %s", pin[0], pin[1], err, out)
		}
	}
	return nil
}

// With LATCH_BENCH_PROFILE=DIR (make profile), BenchmarkIssue_LatchJWT
// starts latch with server.pprof and writes what latch did while the
// callers ran to DIR: a CPU profile of benchProfileSeconds
// (issue.cpu.pprof) and the allocations (issue.allocs.pprof, to read with
// -base issue.allocs.before.pprof).
const benchProfileSeconds = 5

// benchLatchOptions turns server.pprof on when profiling.
func benchLatchOptions() latchOptions {
	if os.Getenv("LATCH_BENCH_PROFILE") == "" {
		return latchOptions{}
	}
	return latchOptions{ServerExtra: "  pprof: true\n"}
}

// profileLatch starts profiling l, when asked to and b.N is worth it, and
// returns the function that waits for the profiles and writes them.
func profileLatch(b *testing.B, l *latch, name string) (wait func()) {
	dir := os.Getenv("LATCH_BENCH_PROFILE")
	if dir == "" || b.N < 1000 {
		return func() {}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	// save runs on the profiling goroutine too: it returns its error.
	save := func(file, path string) error {
		body, err := tryGet(l.metrics+path, http.StatusOK)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, name+"."+file), body, 0o644)
	}
	if err := save("allocs.before.pprof", "/debug/pprof/allocs"); err != nil {
		b.Fatal(err)
	}
	cpuErr := make(chan error, 1)
	go func() {
		cpuErr <- save("cpu.pprof", fmt.Sprintf("/debug/pprof/profile?seconds=%d", benchProfileSeconds))
	}()
	return func() {
		if err := errors.Join(<-cpuErr, save("allocs.pprof", "/debug/pprof/allocs")); err != nil {
			b.Fatal(err)
		}
		b.Logf("profiles of latch in %s", dir)
	}
}

// mintAgentJWTs has SPIRE sign a JWT-SVID for each bench agent.
func mintAgentJWTs(ctx context.Context, audience string) ([]string, error) {
	jwts := make([]string, benchAgents)
	errs := make([]error, benchAgents)
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	for i := range jwts {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			id := spiffeid.RequireFromString(fmt.Sprintf("%sbench-%02d", agentPrefix, i))
			jwts[i], errs[i] = st.SPIRE.MintJWTSVID(ctx, id, benchJWTTTL, audience)
		})
	}
	wg.Wait()
	return jwts, errors.Join(errs...)
}

// benchHTTPClient keeps a connection per caller alive: the default of two
// idle connections per host would make most requests open a new one.
func benchHTTPClient(tr *http.Transport) *http.Client {
	tr.MaxIdleConns, tr.MaxIdleConnsPerHost = 4*benchCallers, 4*benchCallers
	return &http.Client{Transport: tr, Timeout: time.Minute}
}

// latchHTTPClient is an HTTPS client that verifies latch and presents no
// certificate: agents authenticate with their JWT-SVID.
func latchHTTPClient(l *latch) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = l.tlsClient("").Transport.(*http.Transport).TLSClientConfig
	return benchHTTPClient(tr)
}

// callFunc makes one call as agent i and returns what it created (a lease
// ID or token accessor), or an error when the answer is not a success.
type callFunc func(ctx context.Context, agent int) (string, error)

// runCallers runs call b.N times from callers concurrent goroutines, each
// starting at its own agent and going round them, and reports ops/s and
// the p50 and p99 latencies. It returns what the calls created. With rate
// > 0 the calls are paced at rate per second in total (the callers then
// only bound how many are in flight); with 0 each caller calls again as
// soon as it has an answer.
func runCallers(b *testing.B, callers int, rate float64, call callFunc) []string {
	b.Helper()
	procs := runtime.GOMAXPROCS(0)
	if callers%procs != 0 {
		b.Fatalf("%d callers is not a multiple of GOMAXPROCS=%d", callers, procs)
	}
	b.SetParallelism(callers / procs)
	ctx := context.Background()
	var (
		mu       sync.Mutex
		all      []time.Duration
		created  []string
		next     atomic.Int64
		firstErr atomic.Pointer[error]
	)
	var ticks chan struct{}
	if rate > 0 {
		ticks = make(chan struct{}, callers)
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			t := time.NewTicker(time.Duration(float64(time.Second) / rate))
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
					select {
					case ticks <- struct{}{}:
					case <-stop:
						return
					}
				}
			}
		}()
	}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		agent := int(next.Add(1))
		var lat []time.Duration
		var made []string
		for pb.Next() {
			if firstErr.Load() != nil {
				continue // drain: b.Fatal is not allowed here
			}
			if ticks != nil {
				<-ticks
			}
			agent++
			start := time.Now()
			ref, err := call(ctx, agent%benchAgents)
			lat = append(lat, time.Since(start))
			if err != nil {
				firstErr.CompareAndSwap(nil, &err)
				continue
			}
			made = append(made, ref)
		}
		mu.Lock()
		all, created = append(all, lat...), append(created, made...)
		mu.Unlock()
	})
	b.StopTimer()
	if err := firstErr.Load(); err != nil {
		b.Fatal(*err)
	}
	slices.Sort(all)
	pct := func(p int) float64 {
		return float64(all[min(len(all)-1, len(all)*p/100)]) / float64(time.Millisecond)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
	b.ReportMetric(pct(50), "p50-ms")
	b.ReportMetric(pct(99), "p99-ms")
	b.ReportMetric(float64(callers), "callers")
	return created
}

// postJSON posts body and decodes a 200 answer into out.
func postJSON(ctx context.Context, hc *http.Client, url string, header http.Header, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST %s = %d %s", url, resp.StatusCode, data)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(data, out)
}

// issueLatch is one close-ticket request to latch with agent's JWT-SVID;
// it returns the token accessor and Vault policy of the lease, separated
// by a space.
func issueLatch(l *latch, hc *http.Client) callFunc {
	return issueLatchBody(l, hc, func() []byte { return []byte(benchTicketBody) })
}

// issueLatchBody is issueLatch with each request's body from body.
func issueLatchBody(l *latch, hc *http.Client, body func() []byte) callFunc {
	url := l.api + "/v1/credentials"
	return func(ctx context.Context, agent int) (string, error) {
		var res api.CredentialsResponse
		h := http.Header{"Authorization": {"Bearer " + benchSetup.latchJWTs[agent]}}
		if err := postJSON(ctx, hc, url, h, body(), &res); err != nil {
			return "", err
		}
		if res.Secret["token"] == "" || res.Lease.ID == "" || res.Lease.State != api.StateActive || res.Lease.Refs.TokenAccessor == "" {
			return "", fmt.Errorf("issue answered 200 without an active lease and a token: %+v", res.Lease)
		}
		return res.Lease.Refs.TokenAccessor + " " + res.Lease.Refs.Policy + " " + res.Lease.ID, nil
	}
}

// vaultAuth is the auth block of a Vault login or token create answer.
type vaultAuth struct {
	Auth *struct {
		ClientToken string   `json:"client_token"`
		Accessor    string   `json:"accessor"`
		Policies    []string `json:"token_policies"`
	} `json:"auth"`
}

func (a vaultAuth) check() (string, error) {
	if a.Auth == nil || a.Auth.ClientToken == "" || !slices.ContainsFunc(a.Auth.Policies, func(p string) bool { return p == benchPolicy || p == benchLatchPolicy }) {
		return "", fmt.Errorf("Vault answered 200 without a token with policy %s: %+v", benchPolicy, a.Auth)
	}
	return a.Auth.Accessor, nil
}

// vaultCall is one POST to Vault's API path, as root when asRoot.
func vaultCall(path, token string, body func(agent int) []byte) callFunc {
	url := st.Vault.Addr + "/v1/" + path
	h := http.Header{}
	if token != "" {
		h.Set("X-Vault-Token", token)
	}
	return func(ctx context.Context, agent int) (string, error) {
		var a vaultAuth
		if err := postJSON(ctx, benchSetup.vaultClient, url, h, body(agent), &a); err != nil {
			return "", err
		}
		return a.check()
	}
}

// vaultJWTLogin is one login at Vault's JWT auth with agent's JWT-SVID.
func vaultJWTLogin() callFunc {
	return vaultCall("auth/"+benchJWTMount+"/login", "", func(agent int) []byte {
		b, _ := json.Marshal(map[string]string{"role": benchJWTRole, "jwt": benchSetup.vaultJWTs[agent]})
		return b
	})
}

// tokenCreateBody is the bare mint: a token with the ticket policy.
var tokenCreateBody = []byte(`{"policies":["` + benchPolicy + `"],"ttl":"5m"}`)

// revokeLatchAll revokes every lease of l (see revokeLatch).
func revokeLatchAll(b *testing.B, l *latch) int {
	return revokeLatch(b, l, api.RevokeRequest{All: true, Reason: "benchmark"})
}

// assertRevokedEvents fails unless the audit chain has, for every one of
// leases, a revoked event naming the operator who asked and the group the
// lease was revoked with.
func assertRevokedEvents(b *testing.B, l *latch, leases []string) {
	b.Helper()
	want := make(map[string]bool, len(leases))
	for _, id := range leases {
		want[id] = true
	}
	for _, e := range auditSince(b, l, 0) {
		if e.Type == "revoked" && e.Details["requested_by"] != "" && e.Details["group"] != "" {
			delete(want, e.Lease)
		}
	}
	if len(want) > 0 {
		b.Fatalf("%d of %d revoked leases have no revoked event naming who asked and the group", len(want), len(leases))
	}
}

// assertPoliciesCollected restarts l and fails when one of policies is
// left in Vault: latch collects a shared policy that no lease names with
// reconciliation, at start (before it is ready) and every minute after.
func assertPoliciesCollected(b *testing.B, l *latch, policies []string) {
	b.Helper()
	l.stop()
	l.start()
	left, err := setup(b).LatchPolicies(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	if slices.ContainsFunc(left, func(p string) bool { return slices.Contains(policies, p) }) {
		b.Fatalf("policies of revoked leases still in Vault after reconciliation: %v", left)
	}
}

// revokeLatch revokes what req selects and waits until latch and Vault
// confirm it; it returns how many leases it queued.
func revokeLatch(b *testing.B, l *latch, req api.RevokeRequest) int {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	res, err := l.admin().Revoke(ctx, req)
	if err != nil {
		b.Fatalf("revoke %+v: %v", req, err)
	}
	waitLatchRevoked(ctx, b, l)
	return res.Count
}

// waitLatchRevoked polls latch's admin API until no lease is active,
// revoking or irrevocable: every revocation is confirmed by Vault and
// recorded in the store.
func waitLatchRevoked(ctx context.Context, b *testing.B, l *latch) {
	b.Helper()
	adm := l.admin()
	for {
		left := 0
		for _, state := range []string{api.StateActive, api.StateRevoking, api.StateIrrevocable} {
			ls, err := adm.Leases(ctx, api.LeaseQuery{State: state, Limit: 1})
			if err != nil {
				b.Fatalf("list %s leases: %v", state, err)
			}
			left += len(ls.Leases)
		}
		if left == 0 {
			return
		}
		if ctx.Err() != nil {
			b.Fatalf("leases still not revoked: %v", ctx.Err())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// revokePrefix is Vault's own `vault lease revoke -prefix -sync`. It
// waits as long as Vault takes (the API client gives up after 60 s).
func revokePrefix(b *testing.B, prefix string) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, st.Vault.Addr+"/v1/sys/leases/revoke-prefix/"+prefix,
		strings.NewReader(`{"sync":true}`))
	if err != nil {
		b.Fatal(err)
	}
	req.Header.Set("X-Vault-Token", st.Vault.RootToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatalf("revoke-prefix %s: %v", prefix, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(resp.Body)
		b.Fatalf("revoke-prefix %s = %d %s", prefix, resp.StatusCode, data)
	}
}

// vaultAccessors is the set of every token accessor Vault holds.
func vaultAccessors(b *testing.B) map[string]bool {
	b.Helper()
	s, err := setup(b).Root.Logical().ListWithContext(context.Background(), "auth/token/accessors")
	if err != nil {
		b.Fatal(err)
	}
	out := map[string]bool{}
	keys, _ := s.Data["keys"].([]any)
	for _, k := range keys {
		out[fmt.Sprint(k)] = true
	}
	return out
}

// assertGone fails when Vault still holds a token of accessors.
func assertGone(b *testing.B, accessors []string) {
	b.Helper()
	have := vaultAccessors(b)
	n := 0
	for _, a := range accessors {
		if have[a] {
			n++
		}
	}
	if n > 0 {
		b.Fatalf("%d of %d tokens still exist in Vault", n, len(accessors))
	}
}

var histLine = regexp.MustCompile(`(?m)^(latch_vault_request_duration_seconds|latch_issue_duration_seconds|latch_http_request_duration_seconds|latch_store_write_duration_seconds)_(sum|count)(?:\{([^}]*)\})? ([0-9.e+-]+)$`)

// revocationsOK is latch's count of revocations Vault confirmed.
var revocationsOK = regexp.MustCompile(`(?m)^latch_revocations_total\{result="ok"\} ([0-9.e+]+)$`)

// latchTimes reads latch's duration histograms: seconds and count by
// histogram and labels.
func latchTimes(b *testing.B, l *latch) map[string][2]float64 {
	b.Helper()
	out := map[string][2]float64{}
	for _, m := range histLine.FindAllStringSubmatch(get(b, l.metrics+"/metrics"), -1) {
		v, err := strconv.ParseFloat(m[4], 64)
		if err != nil {
			b.Fatal(err)
		}
		k := m[1] + "{" + m[3] + "}"
		e := out[k]
		if m[2] == "sum" {
			e[0] = v
		} else {
			e[1] = v
		}
		out[k] = e
	}
	return out
}

// logLatchTimes logs where latch's time went between two latchTimes:
// the mean of each histogram over the calls in between, and how many
// calls per op (issue or revocation), to read the overhead with.
func logLatchTimes(b *testing.B, before, after map[string][2]float64, ops int, what string) {
	b.Helper()
	var lines []string
	for k, a := range after {
		d := [2]float64{a[0] - before[k][0], a[1] - before[k][1]}
		if d[1] == 0 {
			continue
		}
		lines = append(lines, fmt.Sprintf("  %s: mean %.2f ms, %.2f per %s", k, 1000*d[0]/d[1], d[1]/float64(ops), what))
	}
	slices.Sort(lines)
	b.Logf("latch's own view over %d %ss:\n%s", ops, what, strings.Join(lines, "\n"))
}

// cpuTime is the CPU time (user and system) process pid has used so far,
// from /proc (Linux; USER_HZ is 100 on every Linux architecture Go runs
// on).
func cpuTime(b *testing.B, pid int) time.Duration {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name, which is in parentheses: state is
	// the first, utime the 12th and stime the 13th.
	f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			b.Fatal(err)
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}

// cpuMeter reports the CPU time each named process spent per op between
// its creation and report: on a machine that runs latch, Vault and the
// callers together, throughput is about total CPU per op.
type cpuMeter struct {
	names []string
	pids  []int
	start []time.Duration
}

func newCPUMeter(b *testing.B, namePid ...any) *cpuMeter {
	b.Helper()
	m := &cpuMeter{}
	for i := 0; i < len(namePid); i += 2 {
		pid := namePid[i+1].(int)
		m.names, m.pids = append(m.names, namePid[i].(string)), append(m.pids, pid)
		m.start = append(m.start, cpuTime(b, pid))
	}
	return m
}

func (m *cpuMeter) report(b *testing.B, ops int) {
	b.Helper()
	for i, pid := range m.pids {
		d := cpuTime(b, pid) - m.start[i]
		b.ReportMetric(float64(d)/float64(time.Millisecond)/float64(ops), m.names[i]+"-cpu-ms/op")
	}
}

// BenchmarkIssue_LatchJWT: agents POST /v1/credentials (close-ticket, a
// vault-token lease) with their JWT-SVID over latch's TLS API.
func BenchmarkIssue_LatchJWT(b *testing.B) {
	benchEnv(b)
	l := startLatchWith(b, benchLatchOptions())
	hc := latchHTTPClient(l)
	before := latchTimes(b, l)
	cpu := newCPUMeter(b, "latch", l.pid(), "vault", st.Vault.Pid())
	profiled := profileLatch(b, l, "issue")
	leases := runCallers(b, benchCallers, 0, issueLatch(l, hc))
	cpu.report(b, b.N)
	profiled()
	logLatchTimes(b, before, latchTimes(b, l), len(leases), "issue")
	if n := revokeLatchAll(b, l); n != len(leases) {
		b.Fatalf("revoke --all queued %d leases, the benchmark issued %d", n, len(leases))
	}
}

// BenchmarkIssue_LatchJWT_NewPolicy is BenchmarkIssue_LatchJWT with a
// new ticket, and so a new policy for Vault to write, every request: the
// case sharing policies by content cannot help, for the record.
func BenchmarkIssue_LatchJWT_NewPolicy(b *testing.B) {
	benchEnv(b)
	l := startLatch(b)
	hc := latchHTTPClient(l)
	var ticket atomic.Int64
	body := func() []byte {
		return fmt.Appendf(nil, `{"task":"close-ticket","params":{"ticket":"%d"},"reason":"benchmark"}`, 1000+ticket.Add(1))
	}
	cpu := newCPUMeter(b, "latch", l.pid(), "vault", st.Vault.Pid())
	leases := runCallers(b, benchCallers, 0, issueLatchBody(l, hc, body))
	cpu.report(b, b.N)
	if n := revokeLatchAll(b, l); n != len(leases) {
		b.Fatalf("revoke --all queued %d leases, the benchmark issued %d", n, len(leases))
	}
}

// BenchmarkVaultJWTLogin: the same agents log in to Vault's JWT auth with
// their JWT-SVID and get a token with the ticket policy — what they would
// do without latch.
func BenchmarkVaultJWTLogin(b *testing.B) {
	benchEnv(b)
	cpu := newCPUMeter(b, "vault", st.Vault.Pid())
	accessors := runCallers(b, benchCallers, 0, vaultJWTLogin())
	cpu.report(b, b.N)
	revokePrefix(b, "auth/"+benchJWTMount+"/login")
	assertGone(b, accessors)
}

// BenchmarkVaultTokenCreate: what Vault itself charges for the one call a
// vault-token issue makes, at full load beside BenchmarkVaultJWTLogin.
// Root is the bare create (root token, an orphan role). Latch is latch's
// call without latch: the README's latch-token role, latch's request body,
// and the token of a group parent made through latch-group by latch's own
// AppRole login (so the tokens carry latch's entity, as latch's do).
// Vault's CPU per issue cannot go below Latch's vault-cpu-ms/op.
func BenchmarkVaultTokenCreate(b *testing.B) {
	b.Run("Root", func(b *testing.B) {
		benchEnv(b)
		cpu := newCPUMeter(b, "vault", st.Vault.Pid())
		accessors := runCallers(b, benchCallers, 0, vaultCall("auth/token/create/"+benchMintRole, st.Vault.RootToken,
			func(int) []byte { return tokenCreateBody }))
		cpu.report(b, b.N)
		revokePrefix(b, "auth/token/create/"+benchMintRole)
		assertGone(b, accessors)
	})
	b.Run("Latch", func(b *testing.B) {
		benchEnv(b)
		parent := latchGroupParent(b)
		body := func(agent int) []byte {
			return fmt.Appendf(nil, `{"display_name":"latch-close-ticket","explicit_max_ttl":"300s","meta":{"latch_agent":"%sbench-%d",`+
				`"latch_lease":"01M8Y4FE1GRCKNTPNXW4Y0HHNN","latch_task":"close-ticket"},"no_default_policy":true,`+
				`"policies":["%s"],"renewable":false,"ttl":"300s","type":"service"}`, agentPrefix, agent, benchLatchPolicy)
		}
		cpu := newCPUMeter(b, "vault", st.Vault.Pid())
		accessors := runCallers(b, benchCallers, 0, vaultCall("auth/token/create/"+vaulttoken.DefaultTokenRole, parent, body))
		cpu.report(b, b.N)
		if err := setup(b).Root.Auth().Token().RevokeTreeWithContext(context.Background(), parent); err != nil {
			b.Fatal(err)
		}
		assertGone(b, accessors)
	})
}

// latchGroupParent logs in as latch (its AppRole) and creates a group
// parent through the README's latch-group role, as vault-token does.
func latchGroupParent(b *testing.B) string {
	ctx := context.Background()
	e := setup(b)
	roleID, err := os.ReadFile(e.RoleIDFile)
	if err != nil {
		b.Fatal(err)
	}
	secretID, err := os.ReadFile(e.SecretIDFile)
	if err != nil {
		b.Fatal(err)
	}
	login, err := e.Root.Logical().WriteWithContext(ctx, "auth/approle/login", map[string]any{
		"role_id": strings.TrimSpace(string(roleID)), "secret_id": strings.TrimSpace(string(secretID))})
	if err != nil {
		b.Fatal(err)
	}
	latch, err := e.Root.Clone()
	if err != nil {
		b.Fatal(err)
	}
	latch.SetToken(login.Auth.ClientToken)
	parent, err := latch.Logical().WriteWithContext(ctx, "auth/token/create/"+vaulttoken.DefaultGroupRole, map[string]any{
		"policies": []string{"latch_group"}, "ttl": "1h"})
	if err != nil {
		b.Fatal(err)
	}
	return parent.Auth.ClientToken
}

// BenchmarkOverhead: latch's issue against the bare Vault mint call, both
// paced at half of latch's saturated throughput (measured first, untimed,
// with 1,500 issues from benchCallers callers after 300 to warm up). See the file comment.
func BenchmarkOverhead(b *testing.B) {
	benchEnv(b)
	l := startLatch(b)
	hc := latchHTTPClient(l)
	issue := issueLatch(l, hc)
	mintN(b, 300, issue) // warm up: connections, caches
	start := time.Now()
	mintN(b, 1500, issue)
	half := 1500 / time.Since(start).Seconds() / 2
	revokeLatchAll(b, l)
	b.Logf("latch saturates at %.0f issues/s: half load is %.0f/s", 2*half, half)

	b.Run("Latch", func(b *testing.B) {
		benchEnv(b)
		before := latchTimes(b, l)
		cpu := newCPUMeter(b, "latch", l.pid(), "vault", st.Vault.Pid())
		leases := runCallers(b, benchCallers, half, issue)
		cpu.report(b, b.N)
		logLatchTimes(b, before, latchTimes(b, l), len(leases), "issue")
		if n := revokeLatchAll(b, l); n != len(leases) {
			b.Fatalf("revoke --all queued %d leases, the benchmark issued %d", n, len(leases))
		}
	})
	b.Run("VaultTokenCreate", func(b *testing.B) {
		benchEnv(b)
		cpu := newCPUMeter(b, "vault", st.Vault.Pid())
		accessors := runCallers(b, benchCallers, half, vaultCall("auth/token/create/"+benchMintRole, st.Vault.RootToken,
			func(int) []byte { return tokenCreateBody }))
		cpu.report(b, b.N)
		revokePrefix(b, "auth/token/create/"+benchMintRole)
		assertGone(b, accessors)
	})
	// Vault's CPU per request grows as its load falls (at a third of its
	// saturated rate a token create costs it nearly twice the CPU), so
	// Vault's CPU per issue is compared with a login at the same rate.
	b.Run("VaultJWTLogin", func(b *testing.B) {
		benchEnv(b)
		cpu := newCPUMeter(b, "vault", st.Vault.Pid())
		accessors := runCallers(b, benchCallers, half, vaultJWTLogin())
		cpu.report(b, b.N)
		revokePrefix(b, "auth/"+benchJWTMount+"/login")
		assertGone(b, accessors)
	})
}

// BenchmarkRevoke10k_Latch: an operator revokes 10,000 vault-token leases
// on the admin socket — all of them (32 agents), all of one agent's, or
// all of one template version's; the op ends when latch's API shows every
// one revoked, each confirmed by Vault (through its group's parent).
// Minting them (20-60 s) is not timed.
func BenchmarkRevoke10k_Latch(b *testing.B) {
	b.Run("All", func(b *testing.B) {
		benchRevoke10k(b, issueLatch, func(*latch, []string) api.RevokeRequest { return api.RevokeRequest{All: true} })
	})
	b.Run("Agent", func(b *testing.B) {
		oneAgent := func(l *latch, hc *http.Client) callFunc {
			call := issueLatch(l, hc)
			return func(ctx context.Context, _ int) (string, error) { return call(ctx, 0) }
		}
		benchRevoke10k(b, oneAgent, func(*latch, []string) api.RevokeRequest {
			return api.RevokeRequest{Agent: fmt.Sprintf("%sbench-%02d", agentPrefix, 0)}
		})
	})
	b.Run("Template", func(b *testing.B) {
		benchRevoke10k(b, issueLatch, func(l *latch, leases []string) api.RevokeRequest {
			lease, err := l.admin().Lease(context.Background(), leases[0])
			if err != nil {
				b.Fatal(err)
			}
			return api.RevokeRequest{Template: lease.Task, Version: lease.TemplateVersion}
		})
	})
}

// benchRevoke10k mints benchRevokeCount leases with issue and times the
// revocation sel asks for (given latch and the minted leases' IDs).
func benchRevoke10k(b *testing.B, issue func(*latch, *http.Client) callFunc, sel func(*latch, []string) api.RevokeRequest) {
	b.StopTimer() // the set-up is not timed
	var total time.Duration
	benchEnv(b)
	for range b.N {
		l := startLatch(b)
		var accessors, policies, leases []string
		for _, ref := range mintN(b, benchRevokeCount, issue(l, latchHTTPClient(l))) {
			f := strings.Fields(ref)
			accessors, policies, leases = append(accessors, f[0]), append(policies, f[1]), append(leases, f[2])
		}
		req := sel(l, leases)
		req.Reason = "benchmark"
		before := latchTimes(b, l)
		cpu := newCPUMeter(b, "latch", l.pid(), "vault", st.Vault.Pid())
		b.StartTimer()
		start := time.Now()
		n := revokeLatch(b, l, req)
		elapsed := time.Since(start)
		b.StopTimer()
		cpu.report(b, 1)
		logLatchTimes(b, before, latchTimes(b, l), n, "revocation")
		if n != benchRevokeCount {
			b.Fatalf("revoke %+v queued %d leases, want %d", req, n, benchRevokeCount)
		}
		var confirmed float64
		if m := revocationsOK.FindStringSubmatch(get(b, l.metrics+"/metrics")); m != nil {
			confirmed, _ = strconv.ParseFloat(m[1], 64)
		}
		if confirmed < benchRevokeCount {
			b.Fatalf("latch_revocations_total{result=\"ok\"} = %v, want %d", confirmed, benchRevokeCount)
		}
		assertRevokedEvents(b, l, leases)
		assertGone(b, accessors)
		assertPoliciesCollected(b, l, policies)
		total += elapsed
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "revoke-s")
}

// BenchmarkRevoke10k_VaultPrefix: 10,000 tokens of one token role, then
// Vault's own `vault lease revoke -prefix -sync` on the role's path.
func BenchmarkRevoke10k_VaultPrefix(b *testing.B) {
	b.StopTimer() // the set-up is not timed
	var total time.Duration
	benchEnv(b)
	prefix := "auth/token/create/" + benchRevokeRole
	call := vaultCall(prefix, st.Vault.RootToken, func(int) []byte { return tokenCreateBody })
	for range b.N {
		accessors := mintN(b, benchRevokeCount, call)
		cpu := newCPUMeter(b, "vault", st.Vault.Pid())
		b.StartTimer()
		start := time.Now()
		revokePrefix(b, prefix)
		elapsed := time.Since(start)
		b.StopTimer()
		cpu.report(b, 1)
		assertGone(b, accessors)
		total += elapsed
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "revoke-s")
}

// mintN makes n calls from benchCallers goroutines, untimed. A call
// answered 503 (latch failing closed when its store does not confirm a
// write in time, as on a machine loaded by other work) is tried again, at
// most mintRetries times in all, and the retries are logged.
func mintN(b *testing.B, n int, call callFunc) []string {
	b.Helper()
	const mintRetries = 50
	var (
		next    atomic.Int64
		retries atomic.Int64
		mu      sync.Mutex
		out     = make([]string, 0, n)
		errs    = make([]error, benchCallers)
		wg      sync.WaitGroup
	)
	for w := range benchCallers {
		wg.Go(func() {
			for i := next.Add(1); i <= int64(n); i = next.Add(1) {
				ref, err := call(context.Background(), int(i)%benchAgents)
				for err != nil && strings.Contains(err.Error(), " = 503 ") && retries.Add(1) <= mintRetries {
					time.Sleep(time.Second)
					ref, err = call(context.Background(), int(i)%benchAgents)
				}
				if err != nil {
					errs[w] = err
					return
				}
				mu.Lock()
				out = append(out, ref)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		b.Fatal(err)
	}
	if r := retries.Load(); r > 0 {
		b.Logf("minting %d: %d calls answered 503 and were tried again", n, r)
	}
	return out
}

// BenchmarkDBCreds: database credentials for the same agents, through
// latch (nightly-report, vault-lease: one database/creds read with the
// group's mint token) and as a bare database/creds read (root): the p50
// ratio is latch's overhead where a secret engine does real work (a
// CREATE ROLE in PostgreSQL). Two callers, so latency is what it measures.
func BenchmarkDBCreds(b *testing.B) {
	const callers = 2
	benchEnv(b)
	b.Run("Latch", func(b *testing.B) {
		l := startLatch(b)
		hc := latchHTTPClient(l)
		url := l.api + "/v1/credentials"
		body := []byte(`{"task":"nightly-report","params":{"region":"eu"},"reason":"benchmark"}`)
		issue := func(ctx context.Context, agent int) (string, error) {
			var res api.CredentialsResponse
			h := http.Header{"Authorization": {"Bearer " + benchSetup.latchJWTs[agent]}}
			if err := postJSON(ctx, hc, url, h, body, &res); err != nil {
				return "", err
			}
			if res.Secret["username"] == "" || res.Lease.Refs.VaultLeaseID == "" {
				return "", fmt.Errorf("issue answered 200 without database credentials: %+v", res.Lease)
			}
			return res.Lease.ID, nil
		}
		cpu := newCPUMeter(b, "latch", l.pid(), "vault", st.Vault.Pid())
		leases := runCallers(b, callers, 0, issue)
		cpu.report(b, b.N)
		if n := revokeLatchAll(b, l); n != len(leases) {
			b.Fatalf("revoke --all queued %d leases, the benchmark issued %d", n, len(leases))
		}
	})
	b.Run("VaultRead", func(b *testing.B) {
		url := st.Vault.Addr + "/v1/" + vaultenv.DBMount + "/creds/report-eu"
		read := func(ctx context.Context, _ int) (string, error) {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			if err != nil {
				return "", err
			}
			req.Header.Set("X-Vault-Token", st.Vault.RootToken)
			resp, err := benchSetup.vaultClient.Do(req)
			if err != nil {
				return "", err
			}
			defer resp.Body.Close()
			var s struct {
				LeaseID string            `json:"lease_id"`
				Data    map[string]string `json:"data"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&s); err != nil || resp.StatusCode != http.StatusOK || s.Data["username"] == "" {
				return "", fmt.Errorf("database/creds read = %d (%v)", resp.StatusCode, err)
			}
			return s.LeaseID, nil
		}
		cpu := newCPUMeter(b, "vault", st.Vault.Pid())
		runCallers(b, callers, 0, read)
		cpu.report(b, b.N)
		revokePrefix(b, vaultenv.DBMount+"/creds/report-eu")
	})
}

// BenchmarkIssue_Replicas is issuance through one server on bbolt
// (Bolt1) and through two replicas on the 3-member etcd cluster, the
// callers split between them (Etcd2): issue 15's ratio, in one run.
func BenchmarkIssue_Replicas(b *testing.B) {
	benchEnv(b)
	b.Run("Bolt1", func(b *testing.B) {
		benchReplicas(b, []*latch{startLatch(b)})
	})
	b.Run("Etcd2", func(b *testing.B) {
		store := fmt.Sprintf(`{ etcd: { endpoints: ["%s"], prefix: /latch-bench/%d } }`, strings.Join(st.Etcd.Endpoints(), `", "`), time.Now().UnixNano())
		benchReplicas(b, []*latch{startLatchWith(b, latchOptions{Store: store}), startLatchWith(b, latchOptions{Store: store})})
	})
}

// benchReplicas issues through replicas, agent i through replica i mod n.
func benchReplicas(b *testing.B, replicas []*latch) {
	calls := make([]callFunc, len(replicas))
	for i, l := range replicas {
		calls[i] = issueLatch(l, latchHTTPClient(l))
	}
	runCallers(b, benchCallers, 0, func(ctx context.Context, agent int) (string, error) {
		return calls[agent%len(calls)](ctx, agent)
	})
}
