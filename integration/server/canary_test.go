package server

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker/api"
	"github.com/latchbroker/latch/broker/brokertest"
)

// TestServer_Canary checks that secrets minted for one agent show up
// nowhere else: not in other callers' answers, not in /metrics, not in
// the live event stream, the webhooks, the report, nor in any file latch
// writes (its store, its webhook outbox, its log).
func TestServer_Canary(t *testing.T) {
	hook := newWebhookReceiver(t)
	l := startLatchWith(t, latchOptions{Notify: hook.notifyYAMLFor(t, "[issue, revoke, revoked, violation, alert]")})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	agent := agentPrefix + "canary-bot"
	viewerFiles := l.svidFiles(viewer)

	// The raw SSE stream, as a viewer sees it, from before the fetches.
	sseCtx, stopSSE := context.WithCancel(ctx)
	defer stopSSE()
	req, err := http.NewRequestWithContext(sseCtx, http.MethodGet, l.api+"/v1/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := l.tlsClient(viewer).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Fatalf("GET /v1/events = %d %s", resp.StatusCode, b)
	}
	var sse brokertest.SyncBuffer
	sseDone := make(chan struct{})
	go func() {
		defer close(sseDone)
		defer resp.Body.Close()
		_, _ = io.Copy(&sse, resp.Body)
	}()
	// And `latch audit tail -f`, a child process.
	tailCtx, stopTail := context.WithCancel(ctx)
	defer stopTail()
	tail, tailOut, tailErr := l.command(tailCtx, nil, append([]string{"audit", "tail", "-f", "-o", "json"}, viewerFiles...)...)
	if err := tail.Start(); err != nil {
		t.Fatal(err)
	}
	tailDone := make(chan struct{})
	go func() { _ = tail.Wait(); close(tailDone) }()
	time.Sleep(time.Second) // both streams are subscribed

	c := l.client(agent)
	tok := fetch(ctx, t, c, "close-ticket", map[string]string{"ticket": "42"})
	db := fetch(ctx, t, c, "nightly-report", map[string]string{"region": "eu"})
	canaries := []string{tok.Secret["token"], db.Secret["password"]}
	for _, s := range canaries {
		if len(s) < 8 {
			t.Fatalf("canary %q is too short to search for", s)
		}
	}
	other := fetch(ctx, t, l.client(agentPrefix+"other-bot"), "close-ticket", map[string]string{"ticket": "42"})

	// Wait until both streams have seen the issues, then a little more.
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(sse.String(), db.Lease.ID) || !strings.Contains(tailOut.String(), db.Lease.ID) {
		if time.Now().After(deadline) {
			t.Fatalf("streams did not show lease %s within 15s\nSSE:\n%s\naudit tail:\n%s\n%s", db.Lease.ID, sse.String(), tailOut.String(), tailErr.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(2 * time.Second)
	stopSSE()
	stopTail()
	<-sseDone
	<-tailDone

	seen := map[string]string{
		"SSE stream":       sse.String(),
		"latch audit tail": tailOut.String() + tailErr.String(),
		"/metrics":         get(t, l.metrics+"/metrics"),
	}
	otherJSON, _ := json.Marshal(other)
	seen["another agent's fetch"] = string(otherJSON) + other.Secret["token"]
	leases, err := l.client(viewer).Leases(ctx, api.LeaseQuery{})
	if err != nil {
		t.Fatal(err)
	}
	leasesJSON, _ := json.Marshal(leases)
	seen["GET /v1/leases"] = string(leasesJSON)
	if !strings.Contains(seen["GET /v1/leases"], tok.Lease.ID) {
		t.Fatalf("lease list lacks %s: %s", tok.Lease.ID, leasesJSON)
	}
	for _, args := range [][]string{{"lease", "list", "-o", "json"}, {"lease", "show", tok.Lease.ID, "-o", "json"}, {"lease", "show", db.Lease.ID, "-o", "json"}} {
		r := l.cli(ctx, nil, append(args, viewerFiles...)...)
		if r.code != 0 {
			t.Fatalf("latch %v: %s", args, r)
		}
		seen["latch "+strings.Join(args, " ")] = r.stdout + r.stderr
	}
	audit, err := l.client(viewer).Audit(ctx, api.AuditQuery{})
	if err != nil {
		t.Fatal(err)
	}
	auditJSON, _ := json.Marshal(audit)
	seen["GET /v1/audit"] = string(auditJSON)
	for _, args := range [][]string{{"report", "-o", "json"}, {"agent", "list", "-o", "json"}} {
		seen["latch "+strings.Join(args, " ")] = l.cli(ctx, nil, append(args, viewerFiles...)...).stdout
	}
	hook.first("issue") // the outbox was used
	hook.mu.Lock()
	hooked, _ := json.Marshal(hook.payloads)
	hook.mu.Unlock()
	seen["webhook deliveries"] = string(hooked)

	// The files, once latch has stopped and flushed everything.
	l.stop()
	files, err := filepath.Glob(filepath.Join(l.dir, "*"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if fi, err := os.Stat(f); err != nil || fi.IsDir() || strings.HasSuffix(f, ".pem") || strings.HasSuffix(f, ".json") {
			continue // the SVIDs and bundle latch was given
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		seen["file "+filepath.Base(f)] = string(data)
	}
	for _, want := range []string{"file latch.db", "file latch.db.outbox", "file latch.1.log"} {
		if _, ok := seen[want]; !ok {
			t.Fatalf("%s not found in %s to scan", want, l.dir)
		}
	}

	for where, text := range seen {
		for _, s := range canaries {
			if strings.Contains(text, s) {
				t.Errorf("%s contains a secret minted for %s", where, agent)
			}
		}
	}
}
