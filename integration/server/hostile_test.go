package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/latchbroker/latch/attest"
	"github.com/latchbroker/latch/broker/api"
	"github.com/latchbroker/latch/broker/client"
)

const intruder = "spiffe://example.org/intruder" // matches no agents: entry

// slackReceiver records the text of every Slack-format delivery.
type slackReceiver struct {
	srv   *httptest.Server
	texts chan string
}

func newSlackReceiver(t *testing.T) *slackReceiver {
	r := &slackReceiver{texts: make(chan string, 64)}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var body struct{ Text string }
		if err := json.NewDecoder(req.Body).Decode(&body); err != nil {
			t.Errorf("slack delivery: %v", err)
		}
		r.texts <- body.Text
	}))
	t.Cleanup(r.srv.Close)
	return r
}

// TestServer_SlackInjection: an unregistered SVID asks for a task named
// <!channel> with a reason that is a Slack link. Its violation reaches a
// Slack webhook escaped and inert: no mention, no link.
func TestServer_SlackInjection(t *testing.T) {
	rcv := newSlackReceiver(t)
	l := startLatchWith(t, latchOptions{Notify: fmt.Sprintf("notify:\n  webhooks:\n    - { url: %q, events: [violation], slack: true }\n", rcv.srv.URL)})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	reason := "<https://evil.example|Click here to approve> <@U024BE7LH> <!here> `code` *bold*"
	_, err := l.client(intruder).Credentials(ctx, api.CredentialsRequest{Task: "<!channel>", Reason: reason})
	if client.Code(err) != api.CodeForbidden {
		t.Fatalf("the intruder's request: %v, want forbidden", err)
	}
	select {
	case text := <-rcv.texts:
		for _, bad := range []string{"<!channel>", "<!here>", "<https://", "<@U024BE7LH>", "|Click"} {
			if strings.Contains(text, bad) && !insideCode(text, bad) {
				t.Errorf("Slack text has %q live: %s", bad, text)
			}
		}
		if strings.ContainsAny(strings.Join(codeless(text), ""), "<>") || !strings.Contains(text, "&lt;!channel&gt;") {
			t.Errorf("Slack text does not escape the agent's text: %s", text)
		}
	case <-ctx.Done():
		t.Fatalf("no Slack delivery within a minute\n%s", l.logs())
	}
}

// codeless returns the parts of a Slack text outside code spans.
func codeless(text string) []string {
	parts := strings.Split(text, "`")
	var out []string
	for i := 0; i < len(parts); i += 2 {
		out = append(out, parts[i])
	}
	return out
}

func insideCode(text, s string) bool {
	return !slices.ContainsFunc(codeless(text), func(p string) bool { return strings.Contains(p, s) })
}

// TestServer_Flood: 10,000 denied requests from one SVID within about 10 s.
// The server keeps answering a legitimate agent quickly, the audit chain
// and the log grow by a few entries only, and the metrics count every
// refusal.
func TestServer_Flood(t *testing.T) {
	l := startLatch(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	before := auditLen(t, l)
	hc, err := attest.NewHTTPClient(l.identity(intruder), latchID, attest.MethodX509)
	if err != nil {
		t.Fatal(err)
	}
	hc.Transport.(*http.Transport).MaxIdleConnsPerHost = 8
	const flood = 10000
	var sent, limited atomic.Int64
	var wg sync.WaitGroup
	body := []byte(`{"task":"close-ticket","params":{"ticket":"../../sys"},"reason":"flood"}`)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for sent.Add(1) <= flood {
				code, _, err := tryPost(hc, l.api+"/v1/credentials", body)
				if err != nil {
					t.Errorf("flood request: %v", err)
					return
				}
				if code == http.StatusTooManyRequests {
					limited.Add(1)
				}
			}
		}()
	}
	// Meanwhile a registered agent gets its tickets.
	agent := l.client(agentPrefix + "legit-bot")
	var lat []time.Duration
	floodDone := make(chan struct{})
	go func() { wg.Wait(); close(floodDone) }()
	start := time.Now()
	for i := 0; ; i++ {
		t0 := time.Now()
		res, err := agent.Credentials(ctx, api.CredentialsRequest{Task: "close-ticket", Params: map[string]string{"ticket": strconv.Itoa(i + 1)}, Reason: "real work"})
		if err != nil {
			t.Fatalf("the legitimate agent during the flood: %v", err)
		}
		lat = append(lat, time.Since(t0))
		if err := agent.Release(ctx, res.Lease.ID); err != nil {
			t.Fatal(err)
		}
		select {
		case <-floodDone:
		default:
			continue
		}
		break
	}
	took := time.Since(start)
	slices.Sort(lat)
	p99 := lat[len(lat)*99/100]
	t.Logf("flood of %d took %v (%d limited); legitimate agent: %d requests, p50 %v, p99 %v", flood, took, limited.Load(), len(lat), lat[len(lat)/2], p99)
	if took > 30*time.Second {
		t.Errorf("the flood took %v to be answered, want about 10 s", took)
	}
	if p99 > 100*time.Millisecond {
		t.Errorf("legitimate agent's p99 during the flood is %v, want under 100 ms", p99)
	}
	if limited.Load() < flood-100 {
		t.Errorf("%d of %d flood requests limited, want nearly all", limited.Load(), flood)
	}
	// The audit: the legitimate agent's events, and a few of the intruder's.
	var intruderEvents int
	for _, e := range auditSince(t, l, before) {
		if e.Actor == intruder {
			intruderEvents++
		}
	}
	if intruderEvents > 12 {
		t.Errorf("the flood wrote %d audit events, want at most the first ten and a summary", intruderEvents)
	}
	// Nor the log: past its budget, the intruder costs a line a second.
	if n := strings.Count(l.log(), intruder); n > 200 {
		t.Errorf("the flood wrote %d log lines naming the intruder, want its first refusals and a line a second", n)
	}
	m := get(t, l.metrics+"/metrics")
	if n := metricValue(m, `latch_refused_total{reason="too_many_refusals"}`); n < flood-100 {
		t.Errorf("latch_refused_total{too_many_refusals} = %v, want nearly %d", n, flood)
	}
}

// TestServer_Slowloris: clients that trickle headers or a body, or sit on
// an idle keep-alive connection, are cut off within the configured
// timeouts, while others are served.
func TestServer_Slowloris(t *testing.T) {
	l := startLatchWith(t, latchOptions{ServerExtra: "  read_timeout: 2s\n  idle_timeout: 2s\n"})
	tlsCfg := attest.ClientTLSConfig(l.identity(agentPrefix+"slow-bot"), l.bundle(), latchID)
	host := strings.TrimPrefix(l.api, "https://")
	tests := []struct {
		name string
		send func(w *bufio.Writer) error // what the client manages to send before it stalls
	}{
		{"TrickledHeaders", func(w *bufio.Writer) error {
			if _, err := w.WriteString("POST /v1/credentials HTTP/1.1\r\nHost: latch\r\n"); err != nil {
				return err
			}
			return trickle(w, "X-Slow: "+strings.Repeat("a", 50))
		}},
		{"TrickledBody", func(w *bufio.Writer) error {
			if _, err := w.WriteString("POST /v1/credentials HTTP/1.1\r\nHost: latch\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"); err != nil {
				return err
			}
			return trickle(w, `{"task":"close-ticket","params":{"ticket":"1"},"reason":"`+strings.Repeat("z", 40))
		}},
		{"IdleKeepAlive", func(w *bufio.Writer) error {
			_, err := w.WriteString("GET /v1/whoami HTTP/1.1\r\nHost: latch\r\n\r\n")
			if err == nil {
				err = w.Flush()
			}
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := tls.Dial("tcp", host, tlsCfg)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			start := time.Now()
			closed := make(chan time.Duration, 1)
			go func() {
				// The server's answer (if any), then EOF when it hangs up.
				_, _ = io.Copy(io.Discard, conn)
				closed <- time.Since(start)
			}()
			w := bufio.NewWriter(conn)
			sendErr := make(chan error, 1)
			go func() { sendErr <- tt.send(w) }()
			// Others are served meanwhile.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := l.client(agentPrefix+"busy-bot").Credentials(ctx, api.CredentialsRequest{Task: "close-ticket", Params: map[string]string{"ticket": "7"}, Reason: "busy"}); err != nil {
				t.Fatalf("another client while a slow one holds a connection: %v", err)
			}
			select {
			case d := <-closed:
				if d > 6*time.Second {
					t.Fatalf("cut off after %v, want within the 2 s timeout (and a little)", d)
				}
				t.Logf("cut off after %v", d)
			case <-time.After(15 * time.Second):
				t.Fatal("the slow client still holds its connection after 15 s")
			}
		})
	}
}

// trickle writes s a byte every 200 ms, as a slowloris client does, until
// a write fails (the server hung up) or s is sent.
func trickle(w *bufio.Writer, s string) error {
	for i := range len(s) {
		if err := w.WriteByte(s[i]); err != nil {
			return err
		}
		if err := w.Flush(); err != nil {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
	return nil
}

// TestServer_AuditCheckpoints: the server signs checkpoints to a file;
// a copy of its database whose tail was cut, head and all, passes verify
// alone and fails against the checkpoints, naming the missing records;
// export and prune leave a store and an export that both verify.
func TestServer_AuditCheckpoints(t *testing.T) {
	dir := t.TempDir()
	cpFile := filepath.Join(dir, "checkpoints.jws")
	l := startLatchWith(t, latchOptions{Extra: fmt.Sprintf("audit: { checkpoint_every: 5, checkpoint_interval: 1s, checkpoint_file: %q }\n", cpFile)})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Checkpoints are audit events too (written after the file line):
	// the stream says when one covers the last issue.
	checkpoints, err := l.client(viewer).Events(ctx, api.EventsQuery{Types: []string{"checkpoint"}})
	if err != nil {
		t.Fatal(err)
	}
	defer checkpoints.Close()
	agent := l.client(agentPrefix + "audited-bot")
	for i := range 6 {
		if _, err := agent.Credentials(ctx, api.CredentialsRequest{Task: "close-ticket", Params: map[string]string{"ticket": strconv.Itoa(i + 1)}, Reason: "audit test"}); err != nil {
			t.Fatal(err)
		}
	}
	// The newest event a checkpoint can cover (checkpoints cover others).
	var last uint64
	for _, e := range auditSince(t, l, 0) {
		if e.Type != "checkpoint" {
			last = e.Seq
		}
	}
	for {
		ev, err := checkpoints.Next()
		if err != nil {
			t.Fatalf("no checkpoint of record %d: %v\n%s", last, err, l.logs())
		}
		if seq, _ := strconv.ParseUint(ev.Details["seq"], 10, 64); seq >= last {
			break
		}
	}
	if !checkpointReaches(t, cpFile, last) {
		t.Fatalf("the checkpoint of record %d is an event but not in %s", last, cpFile)
	}
	l.stop()
	db := filepath.Join(l.dir, "latch.db")
	cut := filepath.Join(dir, "cut.db")
	copyFile(t, db, cut)
	r := l.cli(ctx, nil, "audit", "export", "--db", cut)
	keep := 5
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	cutTail(t, cut, keep, lines[keep-1])

	if r := l.cli(ctx, nil, "audit", "verify", "--db", cut); r.code != 0 {
		t.Fatalf("the cut copy alone should verify (which is why checkpoints exist): %v", r)
	}
	bundle := filepath.Join(l.dir, "bundle.json")
	r = l.cli(ctx, nil, "audit", "verify", "--db", cut, "--checkpoint", cpFile, "--bundle", bundle)
	if r.code != 1 || !strings.Contains(r.stdout, fmt.Sprintf("records %d to", keep+1)) {
		t.Fatalf("the cut copy against the checkpoints: %v; want the missing records named", r)
	}

	export := filepath.Join(dir, "export.jsonl")
	r = l.cli(ctx, nil, "audit", "export", "--db", db)
	writeFile(t, export, []byte(r.stdout))
	if r := l.cli(ctx, nil, "audit", "prune", "--db", db, "--through", "3", "--export", export); r.code != 0 {
		t.Fatalf("prune: %v", r)
	}
	for _, args := range [][]string{{"--db", db}, {"--export", export}} {
		if r := l.cli(ctx, nil, append([]string{"audit", "verify", "--checkpoint", cpFile, "--bundle", bundle}, args...)...); r.code != 0 || !strings.Contains(r.stdout, "agrees with the checkpoint") {
			t.Fatalf("verify %v after prune: %v", args, r)
		}
	}
	// The server starts on the pruned store and goes on chaining.
	l.start()
	if _, err := agent.Credentials(ctx, api.CredentialsRequest{Task: "close-ticket", Params: map[string]string{"ticket": "99"}, Reason: "after prune"}); err != nil {
		t.Fatal(err)
	}
}

// checkpointReaches says whether the checkpoint file holds one of a
// record at or past seq.
func checkpointReaches(t *testing.T, path string, seq uint64) bool {
	data, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	for _, line := range strings.Fields(string(data)) {
		parts := strings.Split(line, ".")
		if len(parts) != 3 {
			continue
		}
		var c struct{ Seq uint64 }
		if p, err := decodeSegment(parts[1]); err == nil && json.Unmarshal(p, &c) == nil && c.Seq >= seq {
			return true
		}
	}
	return false
}

// auditSince reads every audit event after seq through the admin socket.
func auditSince(t testing.TB, l *latch, after uint64) []api.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out []api.Event
	for {
		res, err := l.admin().Audit(ctx, api.AuditQuery{After: after, Limit: api.MaxListLimit})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, res.Events...)
		if !res.More {
			return out
		}
		after = res.Next
	}
}

// auditLen is the sequence number of the newest audit event.
func auditLen(t *testing.T, l *latch) uint64 {
	t.Helper()
	evs := auditSince(t, l, 0)
	if len(evs) == 0 {
		return 0
	}
	return evs[len(evs)-1].Seq
}

// metricValue is the value of the sample named exactly name (with its
// labels), 0 when absent.
func metricValue(metrics, name string) float64 {
	for _, line := range strings.Split(metrics, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dst, data)
}

// cutTail deletes the audit records after keep from the database at path
// and moves the head back to record keep (exported as keptLine), as
// someone who can write the file could.
func cutTail(t *testing.T, path string, keep int, keptLine string) {
	t.Helper()
	var kept api.Event
	if err := json.Unmarshal([]byte(keptLine), &kept); err != nil || kept.Seq != uint64(keep) {
		t.Fatalf("record %d's export line %q: %v", keep, keptLine, err)
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	key := func(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }
	err = db.Update(func(tx *bolt.Tx) error {
		audit := tx.Bucket([]byte("audit"))
		var doomed [][]byte
		c := audit.Cursor()
		for k, _ := c.Seek(key(uint64(keep) + 1)); k != nil; k, _ = c.Next() {
			doomed = append(doomed, slices.Clone(k))
		}
		for _, k := range doomed {
			if err := audit.Delete(k); err != nil {
				return err
			}
		}
		return tx.Bucket([]byte("meta")).Put([]byte("audit_head"), append(key(uint64(keep)), kept.Hash...))
	})
	if err != nil {
		t.Fatal(err)
	}
}

func decodeSegment(s string) ([]byte, error) { return base64.RawURLEncoding.DecodeString(s) }

// TestServer_StreamsOutliveReadTimeout: the read timeout cuts slow
// requests, not an event stream that has been read (net/http lifts the
// read deadline once a request's body is read).
func TestServer_StreamsOutliveReadTimeout(t *testing.T) {
	l := startLatchWith(t, latchOptions{ServerExtra: "  read_timeout: 1s\n"})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// A raw stream: the client's EventStream would reconnect and hide a
	// stream the server ended.
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, l.api+"/v1/events?type=issue", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := l.tlsClient(viewer).Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/events: %v, %v", resp, err)
	}
	defer resp.Body.Close()
	lines := bufio.NewScanner(resp.Body)
	l2 := l.client(agentPrefix + "stream-bot")
	time.Sleep(2 * time.Second) // past the read timeout: what is measured is that the stream outlives it
	if _, err := l2.Credentials(ctx, api.CredentialsRequest{Task: "close-ticket", Params: map[string]string{"ticket": "5"}, Reason: "stream test"}); err != nil {
		t.Fatal(err)
	}
	for lines.Scan() {
		if strings.HasPrefix(lines.Text(), "data: ") && strings.Contains(lines.Text(), `"type":"issue"`) {
			return
		}
	}
	t.Fatalf("the event stream ended before the issue event, after the read timeout: %v", lines.Err())
}
