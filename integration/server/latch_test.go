package server

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/latchbroker/latch/attest"
	"github.com/latchbroker/latch/broker/client"
	"github.com/latchbroker/latch/integration/stack"
	"github.com/latchbroker/latch/integration/vaultenv"
)

// latchID is the server's SPIFFE ID: the audience of agents' JWT-SVIDs.
var latchID = spiffeid.RequireFromString("spiffe://example.org/latch")

// Identities the config names.
const (
	agentPrefix = "spiffe://example.org/agent/"
	revoker     = "spiffe://example.org/ops/alice" // roles: [revoker]
	viewer      = "spiffe://example.org/ops/carol" // roles: [viewer]
	adminOp     = "spiffe://example.org/ops/ada"   // roles: [admin]: resumes agents, ends freezes
)

// dbRoles are the database roles of nightly-report: report-<region>.
var dbRoles = []string{"report-eu", "report-us"}

const configYAML = `server:
  listen: {{listen}}
  id: spiffe://example.org/latch
  admin_socket: {{dir}}/admin.sock
  metrics_listen: {{metrics}}
{{serverextra}}spiffe: { svid_cert: svid.pem, svid_key: svid-key.pem, bundle: bundle.json }
store: {{store}}
vault:
  address: {{vault}}
  auth: { method: approle, role_id_file: {{role_id}}, secret_id_file: {{secret_id}} }
backends:
  tokens: { type: vault-token{{tokens}} }
  app-db: { type: vault-lease, path: "database/creds/{{ .vars.role }}"{{appdb}} }
{{backends}}operators:
  - { id: spiffe://example.org/ops/alice, roles: [revoker] }
  - { id: spiffe://example.org/ops/carol, roles: [viewer] }
  - { id: spiffe://example.org/ops/ada, roles: [admin] }
{{operators}}agents:
  - id: spiffe://example.org/agent/*
    owner: spiffe://example.org/ops/bob
    templates: [close-ticket, nightly-report]
{{agents}}templates_dir: templates
{{notify}}{{extra}}`

// templateFiles: close-ticket reads one KV ticket (vault-token),
// nightly-report logs in to PostgreSQL (vault-lease), deploy is granted to
// no agent.
var templateFiles = map[string]string{
	"close-ticket.yaml": `name: close-ticket
description: Read one ticket.
backend: tokens
params:
  ticket: { pattern: "^[0-9]{1,9}$" }
policy: |
  path "secret/data/tickets/{{ .params.ticket }}" { capabilities = ["read"] }
ttl: 5m
risk: low
`,
	"nightly-report.yaml": `name: nightly-report
description: Log in to one region's database.
backend: app-db
params:
  region: { enum: [eu, us] }
vars: { role: "report-{{ .params.region }}" }
ttl: 5m
risk: low
`,
	"deploy.yaml": `name: deploy
description: Granted to no agent.
backend: tokens
policy: |
  path "secret/data/deploy" { capabilities = ["read"] }
ttl: 5m
risk: low
`,
}

// setupOnce sets Vault up for the package, on first use.
var setupOnce = sync.OnceValues(func() (*vaultenv.Env, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return vaultenv.Setup(ctx, st, vaultenv.Options{DBRoles: dbRoles})
})

// setup returns the Vault set up once for the package.
func setup(t testing.TB) *vaultenv.Env {
	t.Helper()
	e, err := setupOnce()
	if err != nil {
		t.Fatalf("set up Vault: %v", err)
	}
	return e
}

// latch is a `latch server` process and the files it runs on.
type latch struct {
	t       testing.TB
	dir     string
	config  string
	api     string // https://127.0.0.1:port
	metrics string // http://127.0.0.1:port
	socket  string
	logPath string

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{} // closed when cmd has exited
	exited chan error    // gets cmd.Wait's error (once: waitReady takes it)
	run    int           // how many times it was started: logs are latch.<run>.log
}

// freePort returns a free 127.0.0.1 address (see stack.FreePort).
func freePort(t testing.TB) string {
	t.Helper()
	port, err := stack.FreePort(false)
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// startLatch writes a config into a fresh directory and starts the server
// on it; it is killed when the test ends.
func startLatch(t testing.TB) *latch {
	t.Helper()
	return startLatchWith(t, latchOptions{})
}

// latchOptions adds to the config of startLatchWith. Each YAML string is
// whole lines, indented as list items of the key it extends.
type latchOptions struct {
	Operators   string            // more entries of operators:
	Agents      string            // more entries of agents:
	Notify      string            // a whole notify: block
	Extra       string            // more top-level blocks (approvals:, auto_pause:)
	ServerExtra string            // more keys of server:, indented two spaces
	Templates   map[string]string // more template files
	Store       string            // the store: value; { path: latch.db } when empty
	DNSNames    []string          // DNS names in latch's SVID, beside its SPIFFE ID
	AppRole     string            // the AppRole latch logs in with; "latch" when empty
	Tokens      string            // more keys of backends.tokens, after a comma
	AppDB       string            // more keys of backends.app-db, after a comma
	Backends    string            // more entries of backends:, indented two spaces
	NoWait      bool              // start it, and do not wait until it is ready
}

// startLatchWith is startLatch with more operators, agents, templates,
// webhooks and settings.
func startLatchWith(t testing.TB, o latchOptions) *latch {
	t.Helper()
	e := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Short: a unix socket path has at most 107 bytes.
	dir, err := os.MkdirTemp("", "latch-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	svid, err := st.SPIRE.MintX509SVID(ctx, latchID, time.Hour, o.DNSNames...)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "svid.pem"), svid.CertPEM)
	writeFile(t, filepath.Join(dir, "svid-key.pem"), svid.KeyPEM)
	writeBundle(t, ctx, filepath.Join(dir, "bundle.json"))
	roleID, secretID, err := e.AppRoleFiles(ctx, cmp.Or(o.AppRole, "latch"))
	if err != nil {
		t.Fatal(err)
	}
	l := &latch{t: t, dir: dir, config: filepath.Join(dir, "latch.yaml"), socket: filepath.Join(dir, "admin.sock")}
	if err := os.Mkdir(filepath.Join(dir, "templates"), 0o700); err != nil {
		t.Fatal(err)
	}
	for name, body := range templateFiles {
		l.writeTemplate(name, body)
	}
	for name, body := range o.Templates {
		l.writeTemplate(name, body)
	}
	t.Cleanup(l.stop)
	// A free port can be taken (by any outgoing connection) between
	// freePort closing it and latch binding it: then pick others.
	for attempt := 1; ; attempt++ {
		listen, metrics := freePort(t), freePort(t)
		l.api, l.metrics = "https://"+listen, "http://"+metrics
		cfg := strings.NewReplacer("{{listen}}", listen, "{{metrics}}", metrics, "{{dir}}", dir,
			"{{vault}}", st.Vault.Addr, "{{role_id}}", roleID, "{{secret_id}}", secretID,
			"{{operators}}", o.Operators, "{{agents}}", o.Agents, "{{notify}}", o.Notify, "{{extra}}", o.Extra, "{{serverextra}}", o.ServerExtra,
			"{{store}}", cmp.Or(o.Store, "{ path: latch.db }"),
			"{{tokens}}", o.Tokens, "{{appdb}}", o.AppDB, "{{backends}}", o.Backends).Replace(configYAML)
		writeFile(t, l.config, []byte(cfg))
		if o.NoWait {
			l.launch()
			break
		}
		err := l.tryStart()
		if err == nil {
			break
		}
		if attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			t.Fatal(err)
		}
		t.Logf("latch server could not bind, trying other ports: %v", err)
	}
	return l
}

// writeBundle writes the trust domain's SPIFFE bundle (JSON).
func writeBundle(t testing.TB, ctx context.Context, path string) {
	t.Helper()
	b, err := st.SPIRE.Bundle(ctx)
	if err != nil {
		t.Fatal(err)
	}
	data, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, data)
}

func (l *latch) writeTemplate(name, body string) {
	writeFile(l.t, filepath.Join(l.dir, "templates", name), []byte(body))
}

// start starts the process and waits until /readyz answers 200.
func (l *latch) start() {
	l.t.Helper()
	if err := l.tryStart(); err != nil {
		l.t.Fatal(err)
	}
}

// tryStart is start, returning why the server did not become ready.
func (l *latch) tryStart() error {
	l.t.Helper()
	l.launch()
	return l.waitReady(30 * time.Second)
}

// launch starts the process, logging to the next latch.N.log.
func (l *latch) launch() {
	t := l.t
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.run++
	l.logPath = filepath.Join(l.dir, fmt.Sprintf("latch.%d.log", l.run))
	logf, err := os.Create(l.logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(latchBin, "server", "--config", l.config)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	l.cmd, l.done = cmd, make(chan struct{})
	l.exited = make(chan error, 1)
	go func(done chan struct{}, exited chan error) { exited <- cmd.Wait(); close(done) }(l.done, l.exited)
}

// waitReady waits until /readyz answers 200, the process exits, or d has
// passed.
func (l *latch) waitReady(d time.Duration) error {
	l.mu.Lock()
	exited := l.exited
	l.mu.Unlock()
	deadline := time.Now().Add(d)
	for {
		select {
		case err := <-exited:
			return fmt.Errorf("latch server exited before it was ready: %v\n%s", err, l.logs())
		default:
		}
		resp, err := http.Get(l.metrics + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("latch server not ready after %v (last: %v)\n%s", d, err, l.logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// logs returns every run's log.
func (l *latch) logs() string {
	var b strings.Builder
	for i := 1; i <= l.run; i++ {
		data, _ := os.ReadFile(filepath.Join(l.dir, fmt.Sprintf("latch.%d.log", i)))
		fmt.Fprintf(&b, "--- latch server log, run %d ---\n%s", i, data)
	}
	return b.String()
}

// log returns the current run's log.
func (l *latch) log() string {
	data, _ := os.ReadFile(l.logPath)
	return string(data)
}

// signal sends sig to the running process.
func (l *latch) signal(sig syscall.Signal) {
	l.t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.cmd.Process.Signal(sig); err != nil {
		l.t.Fatalf("signal %v: %v", sig, err)
	}
}

// kill9 kills the process with SIGKILL and waits until it is gone.
func (l *latch) kill9() {
	l.t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	_ = l.cmd.Process.Kill()
	<-l.done
}

// stop ends the process (SIGTERM, then SIGKILL) and prints its logs if
// the test failed.
func (l *latch) stop() {
	l.mu.Lock()
	if l.cmd == nil {
		l.mu.Unlock()
		return // never started
	}
	p, done := l.cmd.Process, l.done
	l.mu.Unlock()
	_ = p.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = p.Kill()
		<-done
	}
	if l.t.Failed() {
		l.t.Log(l.logs())
	}
}

// admin is a client of the admin socket.
func (l *latch) admin() *client.Client { return client.NewUnix(l.socket) }

// writeSVID mints an X.509-SVID for id with SPIRE and writes it to a
// directory of its own: the certificate and key files.
func (l *latch) writeSVID(id string) (cert, key string) {
	t := l.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svid, err := st.SPIRE.MintX509SVID(ctx, spiffeid.RequireFromString(id), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp(l.dir, "id-")
	if err != nil {
		t.Fatal(err)
	}
	cert, key = filepath.Join(dir, "svid.pem"), filepath.Join(dir, "key.pem")
	writeFile(t, cert, svid.CertPEM)
	writeFile(t, key, svid.KeyPEM)
	return cert, key
}

// identity mints an X.509-SVID for id with SPIRE and returns its files
// as an attest.Source.
func (l *latch) identity(id string) *attest.Source {
	t := l.t
	t.Helper()
	cert, key := l.writeSVID(id)
	src, err := attest.OpenFiles(attest.FilesConfig{
		CertFile: cert, KeyFile: key,
		BundleFile: filepath.Join(l.dir, "bundle.json"), PollInterval: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

// bundle is the trust domain's bundle, to verify latch with.
func (l *latch) bundle() *attest.Source {
	l.t.Helper()
	src, err := attest.OpenFiles(attest.FilesConfig{BundleFile: filepath.Join(l.dir, "bundle.json"), TrustDomain: latchID.TrustDomain(), PollInterval: -1})
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { src.Close() })
	return src
}

// client is a latch client presenting id's X.509-SVID.
func (l *latch) client(id string) *client.Client {
	l.t.Helper()
	hc, err := attest.NewHTTPClient(l.identity(id), latchID, attest.MethodX509)
	if err != nil {
		l.t.Fatal(err)
	}
	c, err := client.New(hc, l.api)
	if err != nil {
		l.t.Fatal(err)
	}
	return c
}

// tlsClient is a plain HTTPS client that verifies latch and presents
// id's X.509-SVID (no certificate when id is "").
func (l *latch) tlsClient(id string) *http.Client {
	l.t.Helper()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if id == "" {
		tr.TLSClientConfig = attest.ClientTLSConfig(nil, l.bundle(), latchID)
	} else {
		tr.TLSClientConfig = attest.ClientTLSConfig(l.identity(id), l.bundle(), latchID)
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// post sends body to path with hc and returns the status and body.
func post(t testing.TB, hc *http.Client, url string, body []byte, header http.Header) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// get fetches url with a plain client.
func get(t testing.TB, url string) string {
	t.Helper()
	b, err := tryGet(url, http.StatusOK)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// tryGet is get that returns its error instead of failing (for use off
// the test's goroutine), and an answer other than status as one.
func tryGet(url string, status int) ([]byte, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != status {
		err = fmt.Errorf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	return b, err
}

// tryPost is post that returns transport errors instead of failing.
func tryPost(hc *http.Client, url string, body []byte) (int, string, error) {
	resp, err := hc.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// pid is the running process's ID.
func (l *latch) pid() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cmd.Process.Pid
}
