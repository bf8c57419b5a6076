package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/urfave/cli/v2"

	"github.com/latchbroker/latch/attest"
	"github.com/latchbroker/latch/attest/attesttest"
	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/api"
	"github.com/latchbroker/latch/broker/boltstore"
	"github.com/latchbroker/latch/broker/brokertest"
	"github.com/latchbroker/latch/broker/client"
	"github.com/latchbroker/latch/broker/httpapi"
	"github.com/latchbroker/latch/broker/promstats"
)

var (
	rtTD       = spiffeid.RequireTrustDomainFromString("example.org")
	rtServerID = spiffeid.RequireFromPath(rtTD, "/latch")
	rtAgent    = spiffeid.RequireFromPath(rtTD, "/agent/report-bot")
	rtRevoker  = spiffeid.RequireFromPath(rtTD, "/ops/rex")
	rtAdmin    = spiffeid.RequireFromPath(rtTD, "/ops/ada")
	rtViewer   = spiffeid.RequireFromPath(rtTD, "/ops/vera")
	rtApprover = spiffeid.RequireFromPath(rtTD, "/ops/abe")
)

// rtSecret is what the fake backend mints; the quote tests shell quoting.
const rtSecret = "s3cr3t'with quote"

const rtPolicy = `
operators:
  - { id: spiffe://example.org/ops/vera, roles: [viewer] }
  - { id: spiffe://example.org/ops/rex, roles: [revoker] }
  - { id: spiffe://example.org/ops/ada, roles: [admin] }
  - { id: spiffe://example.org/ops/abe, roles: [approver] }
agents:
  - id: spiffe://example.org/agent/report-*
    owner: spiffe://example.org/ops/bob
    templates: [report, ticket]
`

var rtTemplates = map[string]string{
	"report.yaml": `
name: report
description: Read one region's sales tables.
backend: fake
params:
  region: { enum: [eu, us] }
ttl: 10m
max_ttl: 30m
risk: low
`,
	"ticket.yaml": `
name: ticket
description: Touch one ticket; needs approval.
backend: fake
params:
  ticket: { pattern: "^[0-9]{1,9}$" }
ttl: 5m
max_ttl: 5m
risk: high
`,
}

// rtBackend mints rtSecret, which has a quote in it, to test shell quoting.
func rtBackend() *brokertest.Backend {
	b := brokertest.NewBackend()
	b.Fields = func(lease string) map[string]string {
		return map[string]string{"username": "u-" + lease, "password": rtSecret}
	}
	return b
}

// rtEnv is a latch server in the test: the real HTTP API over a Service
// on bbolt, its admin socket, and SVID files for an agent and operators.
type rtEnv struct {
	t      *testing.T
	url    string
	socket string
	svc    *broker.Service
	dir    string
	bundle string
	ca     *attesttest.CA
	// eventStreams gets a value (if none is pending) when a request for
	// the event stream reaches the admin socket.
	eventStreams chan struct{}
}

func newRTEnv(t *testing.T) *rtEnv {
	t.Helper()
	e := &rtEnv{t: t, dir: t.TempDir(), eventStreams: make(chan struct{}, 1)}
	ca := attesttest.New(t, rtTD)
	e.ca = ca
	st, err := boltstore.Open(filepath.Join(e.dir, "latch.db"), boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	pol := brokertest.LoadPolicy(t, rtPolicy, rtTemplates)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	metrics := promstats.New()
	e.svc, err = broker.NewService(context.Background(), broker.Config{
		Store: st, Policy: pol, Backends: map[string]broker.Backend{"fake": rtBackend()},
		Logger: log, Metrics: metrics,
	})
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := attest.NewVerifier(attest.Config{ID: rtServerID, X509Bundles: x509bundle.NewSet(ca.X509Bundle()), JWTBundles: jwtbundle.NewSet(ca.JWTBundle())})
	if err != nil {
		t.Fatal(err)
	}
	h, err := httpapi.New(httpapi.Config{Service: e.svc, Verifier: verifier, Logger: log, Metrics: metrics, Heartbeat: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	tlsConfig, err := verifier.ServerTLSConfig(ca.X509SVID(rtServerID))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = stdlog.New(io.Discard, "", 0) // the impostor test's handshake
	srv.Listener = tls.NewListener(srv.Listener, tlsConfig)
	srv.Start()
	t.Cleanup(srv.Close)
	e.url = "https://" + srv.Listener.Addr().String()

	admin, err := httpapi.New(httpapi.Config{Service: e.svc, AdminSocket: true, Logger: log, Metrics: metrics})
	if err != nil {
		t.Fatal(err)
	}
	// Unix socket paths are short; t.TempDir may be too long.
	sockDir, err := os.MkdirTemp("", "latch")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	e.socket = filepath.Join(sockDir, "admin.sock")
	ln, err := httpapi.ListenUnix(e.socket)
	if err != nil {
		t.Fatal(err)
	}
	asrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/events" {
			select {
			case e.eventStreams <- struct{}{}:
			default:
			}
		}
		admin.ServeHTTP(w, r)
	})}
	go asrv.Serve(ln)
	t.Cleanup(func() { asrv.Close() })

	e.bundle = filepath.Join(e.dir, "bundle.pem")
	ca.WriteBundle(e.bundle)
	for _, id := range []spiffeid.ID{rtAgent, rtRevoker, rtViewer, rtApprover, rtAdmin} {
		name := filepath.Base(id.Path())
		attesttest.WriteSVID(t, ca.X509SVID(id), filepath.Join(e.dir, name+".pem"), filepath.Join(e.dir, name+".key"))
	}
	return e
}

// as returns the connection flags of the SVID files of id.
func (e *rtEnv) as(id spiffeid.ID) []string {
	name := filepath.Base(id.Path())
	return []string{"--addr", e.url, "--server-id", rtServerID.String(),
		"--cert", filepath.Join(e.dir, name+".pem"), "--key", filepath.Join(e.dir, name+".key"), "--bundle", e.bundle}
}

// run runs latch with stdin and returns stdout, stderr and the exit status.
func (e *rtEnv) run(stdin string, args ...string) (string, string, int) {
	e.t.Helper()
	var out, errOut bytes.Buffer
	code := e.runTo(&out, &errOut, stdin, args...)
	return out.String(), errOut.String(), code
}

// runTo runs latch with stdin, writing to out and errOut, and returns the
// exit status.
func (e *rtEnv) runTo(out, errOut io.Writer, stdin string, args ...string) int {
	e.t.Helper()
	code := 0
	old := cli.OsExiter
	cli.OsExiter = func(c int) { code = c }
	defer func() { cli.OsExiter = old }()
	app := newApp()
	app.Writer, app.ErrWriter, app.Reader = out, errOut, strings.NewReader(stdin)
	if err := app.Run(append([]string{"latch"}, args...)); err != nil && code == 0 {
		code = exitCode(err)
		io.WriteString(errOut, err.Error())
	}
	return code
}

// watchBuffer is output a test reads while it is written, with a signal:
// seen is closed once the output contains want. A test waits on seen for a
// line of output instead of sleeping or polling.
type watchBuffer struct {
	brokertest.SyncBuffer
	want string
	seen chan struct{}
	once sync.Once
}

func newWatchBuffer(want string) *watchBuffer {
	return &watchBuffer{want: want, seen: make(chan struct{})}
}

func (w *watchBuffer) Write(p []byte) (int, error) {
	n, err := w.SyncBuffer.Write(p)
	if strings.Contains(w.String(), w.want) {
		w.once.Do(func() { close(w.seen) })
	}
	return n, err
}

// cmd builds an argument list: the command words, then the flags.
func cmd(words []string, flags ...[]string) []string {
	out := append([]string(nil), words...)
	for _, f := range flags {
		out = append(out, f...)
	}
	return out
}

func (e *rtEnv) mustRun(args ...string) string {
	e.t.Helper()
	out, errOut, code := e.run("", args...)
	if code != 0 {
		e.t.Fatalf("latch %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

func (e *rtEnv) lease(id string) api.Lease {
	e.t.Helper()
	out := e.mustRun(cmd([]string{"lease", "show", id, "-o", "json"}, e.as(rtViewer))...)
	var res api.LeaseResponse
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		e.t.Fatalf("lease show -o json: %v\n%s", err, out)
	}
	return res.Lease
}

// fetchJSON fetches report credentials for the agent.
func (e *rtEnv) fetchJSON() fetchJSON {
	e.t.Helper()
	out := e.mustRun(cmd([]string{"fetch", "--task", "report", "--param", "region=eu", "--reason", "nightly run", "-o", "json"}, e.as(rtAgent))...)
	var res fetchJSON
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		e.t.Fatalf("fetch -o json: %v\n%s", err, out)
	}
	return res
}

func TestFetch_EnvAndJSON(t *testing.T) {
	e := newRTEnv(t)
	out := e.mustRun(cmd([]string{"fetch", "--task", "report", "-p", "region=eu", "--reason", "nightly run"}, e.as(rtAgent))...)
	if !strings.Contains(out, `export LATCH_PASSWORD='s3cr3t'\''with quote'`) {
		t.Errorf("env output lacks the shell-quoted password:\n%s", out)
	}
	for _, want := range []string{"export LATCH_LEASE_ID='", "export LATCH_LEASE_EXPIRES_AT='", "export LATCH_USERNAME='u-"} {
		if !strings.Contains(out, want) {
			t.Errorf("env output lacks %q:\n%s", want, out)
		}
	}

	res := e.fetchJSON()
	if res.Lease == nil || res.Lease.ID == "" || res.Lease.State != api.StateActive || res.Secret["password"] != rtSecret {
		t.Fatalf("fetch -o json: %+v", res)
	}
}

func TestFetch_DeniedExit3(t *testing.T) {
	e := newRTEnv(t)
	// An operator is no registered agent.
	_, errOut, code := e.run("", cmd([]string{"fetch", "--task", "report", "-p", "region=eu", "--reason", "x"}, e.as(rtViewer))...)
	if code != exitDenied || !strings.Contains(errOut, "403") || !strings.Contains(errOut, "forbidden") {
		t.Fatalf("unregistered agent: exit %d, stderr %q; want 3 with the reason", code, errOut)
	}
	// Bad param value: invalid, exit 1 or 3 naming the param — not 0.
	_, errOut, code = e.run("", cmd([]string{"fetch", "--task", "report", "-p", "region=mars", "--reason", "x"}, e.as(rtAgent))...)
	if code == 0 || !strings.Contains(errOut, "region") {
		t.Fatalf("bad param: exit %d, stderr %q", code, errOut)
	}
}

func TestFetch_Usage(t *testing.T) {
	e := newRTEnv(t)
	for name, args := range map[string][]string{
		"no task":      cmd([]string{"fetch", "--reason", "x"}, e.as(rtAgent)),
		"no reason":    cmd([]string{"fetch", "--task", "report"}, e.as(rtAgent)),
		"bad output":   cmd([]string{"fetch", "--task", "report", "--reason", "x", "-o", "yaml"}, e.as(rtAgent)),
		"unknown flag": cmd([]string{"fetch", "--tusk", "report"}, e.as(rtAgent)),
		"no identity":  {"fetch", "--task", "report", "--reason", "x"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv("SPIFFE_ENDPOINT_SOCKET", "")
			_, errOut, code := e.run("", args...)
			if code != exitUsage {
				t.Fatalf("exit %d, stderr %q; want 2", code, errOut)
			}
		})
	}
}

func TestFetch_PendingApprovalExit4(t *testing.T) {
	e := newRTEnv(t)
	out, errOut, code := e.run("", cmd([]string{"fetch", "--task", "ticket", "-p", "ticket=42", "--reason", "fix it", "--wait", "300ms", "-o", "json"}, e.as(rtAgent))...)
	if code != exitPending {
		t.Fatalf("exit %d, stderr %q; want 4", code, errOut)
	}
	var res fetchJSON
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Approval == nil || res.Approval.ID == "" {
		t.Fatalf("pending -o json: %v %s", err, out)
	}
	if !strings.Contains(errOut, res.Approval.ID) || !strings.Contains(errOut, "waiting for approval") || !strings.Contains(errOut, "--approval-id") {
		t.Fatalf("stderr should name the approval, show progress and how to pick it up: %q", errOut)
	}
}

func TestFetch_WaitsForApproval(t *testing.T) {
	e := newRTEnv(t)
	// fetch says it is waiting, with the approval pending, just before it
	// long-polls: that is when to approve. --wait bounds the test.
	errOut := newWatchBuffer("waiting for approval")
	fetched := make(chan struct{})
	approved := make(chan error, 1)
	go func() {
		select {
		case <-errOut.seen:
		case <-fetched:
			approved <- errors.New("fetch ended without waiting for approval")
			return
		}
		ctx := context.Background()
		as, err := e.svc.Approvals().List(ctx, broker.ApprovalFilter{Status: broker.ApprovalPending})
		if err != nil || len(as) != 1 {
			approved <- fmt.Errorf("pending approvals: %d, %v; want 1", len(as), err)
			return
		}
		_, err = e.svc.Approvals().Review(ctx, "spiffe://example.org/ops/abe", as[0].ID, true, "looks right", false)
		approved <- err
	}()
	var stdout bytes.Buffer
	code := e.runTo(&stdout, errOut, "", cmd([]string{"fetch", "--task", "ticket", "-p", "ticket=42", "--reason", "fix it", "--request-id", "run-1", "--wait", "20s"}, e.as(rtAgent))...)
	close(fetched)
	out := stdout.String()
	if err := <-approved; err != nil {
		t.Fatalf("approve: %v\nstderr: %s", err, errOut)
	}
	if code != 0 || !strings.Contains(out, "export LATCH_PASSWORD=") {
		t.Fatalf("fetch --wait: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if !strings.Contains(errOut.String(), "approval required") {
		t.Fatalf("fetch --wait does not say approval is required: %q", errOut)
	}
}

func TestFetch_JWTSVIDFile(t *testing.T) {
	e := newRTEnv(t)
	tok := filepath.Join(e.dir, "agent.jwt")
	if err := os.WriteFile(tok, []byte(e.ca.JWTSVID(rtAgent, []string{rtServerID.String()})), 0o600); err != nil {
		t.Fatal(err)
	}
	out := e.mustRun("fetch", "--task", "report", "-p", "region=eu", "--reason", "jwt", "-o", "json",
		"--addr", e.url, "--server-id", rtServerID.String(), "--jwt", "--jwt-svid", tok, "--bundle", e.bundle)
	var res fetchJSON
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Lease == nil || res.Lease.Agent != rtAgent.String() {
		t.Fatalf("fetch with a JWT-SVID: %v %s", err, out)
	}
	// The server must prove it is --server-id.
	args := cmd([]string{"fetch", "--task", "report", "-p", "region=eu", "--reason", "mtls"}, e.as(rtAgent), []string{"--server-id", "spiffe://example.org/impostor"})
	_, errOut, code := e.run("", args...)
	t.Logf("wrong server: %s", errOut)
	if code != exitError || !strings.Contains(errOut, "impostor") {
		t.Fatalf("wrong server ID: exit %d, stderr %q", code, errOut)
	}
}

func TestLeaseList_JSONAndTable(t *testing.T) {
	e := newRTEnv(t)
	id := e.fetchJSON().Lease.ID
	out := e.mustRun(cmd([]string{"lease", "list", "--agent", rtAgent.String(), "-o", "json"}, e.as(rtViewer))...)
	var res api.LeasesResponse
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("lease list -o json: %v\n%s", err, out)
	}
	if len(res.Leases) != 1 || res.Leases[0].ID != id {
		t.Fatalf("lease list: %+v; want lease %s", res.Leases, id)
	}
	if strings.Contains(out, rtSecret) {
		t.Fatal("lease list shows the secret")
	}
	out = e.mustRun(cmd([]string{"lease", "list"}, e.as(rtViewer))...)
	if !strings.Contains(out, "ID") || !strings.Contains(out, id) || !strings.Contains(out, "report") {
		t.Fatalf("lease list table:\n%s", out)
	}
	// Flags after the argument.
	out = e.mustRun(append([]string{"lease", "show", id}, e.as(rtViewer)...)...)
	if !strings.Contains(out, "State:") || !strings.Contains(out, "active") {
		t.Fatalf("lease show:\n%s", out)
	}
}

func TestRevoke_LeaseWithFlagsAfterArgument(t *testing.T) {
	e := newRTEnv(t)
	id := e.fetchJSON().Lease.ID
	// The viewer lacks the revoker role: denied, exit 3.
	_, errOut, code := e.run("", append([]string{"revoke", id, "--reason", "leak"}, e.as(rtViewer)...)...)
	if code != exitDenied {
		t.Fatalf("viewer revoke: exit %d, stderr %q; want 3", code, errOut)
	}
	out := e.mustRun(append([]string{"revoke", id, "--reason", "leak"}, e.as(rtRevoker)...)...)
	if !strings.Contains(out, "queued 1 lease") {
		t.Fatalf("revoke: %q", out)
	}
	if st := e.lease(id).State; st == api.StateActive {
		t.Fatalf("lease still active after revoke")
	}
}

func TestRevoke_Usage(t *testing.T) {
	e := newRTEnv(t)
	for name, args := range map[string][]string{
		"no selector":   {"revoke", "--reason", "x", "--admin-socket", e.socket},
		"two":           {"revoke", "--agent", rtAgent.String(), "--all", "--reason", "x", "--admin-socket", e.socket},
		"no reason":     {"revoke", "--all", "--admin-socket", e.socket},
		"flag no val":   {"revoke", "--all", "--admin-socket", e.socket, "--reason"},
		"unknown flag":  {"revoke", "01J0000000000000000000000A", "--bogus"},
		"version alone": {"revoke", "--all", "--version", "sha256:0123456789ab", "--reason", "x", "--admin-socket", e.socket},
	} {
		t.Run(name, func(t *testing.T) {
			_, errOut, code := e.run("", args...)
			if code != exitUsage {
				t.Fatalf("exit %d, stderr %q; want 2", code, errOut)
			}
		})
	}
}

// TestRevoke_TemplateByName: --template takes the name an operator knows;
// --version narrows it to the hash lease list prints, and lease show
// prints name and full hash.
func TestRevoke_TemplateByName(t *testing.T) {
	e := newRTEnv(t)
	id := e.fetchJSON().Lease.ID
	version := e.lease(id).TemplateVersion
	short := version[:len("sha256:")+12]
	if out := e.mustRun("lease", "list", "--admin-socket", e.socket); !strings.Contains(out, "VERSION") || !strings.Contains(out, short) {
		t.Fatalf("lease list does not print the short version %s:\n%s", short, out)
	}
	if out := e.mustRun("lease", "show", id, "--admin-socket", e.socket); !strings.Contains(out, "report "+version) {
		t.Fatalf("lease show does not print the template's name and version:\n%s", out)
	}
	_, errOut, code := e.run("", "revoke", "--template", version, "--reason", "x", "--yes", "--admin-socket", e.socket)
	if code == exitOK || !strings.Contains(errOut, "name") || !strings.Contains(errOut, "version") {
		t.Fatalf("revoke --template HASH: exit %d, stderr %q; want a refusal pointing at --version", code, errOut)
	}
	out := e.mustRun("revoke", "--template", "report", "--version", "sha256:000000000000", "--reason", "x", "--yes", "--admin-socket", e.socket)
	if !strings.Contains(out, "nothing to revoke") {
		t.Fatalf("revoke of another version: %q", out)
	}
	out = e.mustRun("revoke", "--template", "report", "--version", short, "--reason", "drift", "--yes", "--admin-socket", e.socket)
	if !strings.Contains(out, "queued 1 lease") {
		t.Fatalf("revoke --template report --version %s: %q", short, out)
	}
	if e.lease(id).State == api.StateActive {
		t.Fatal("lease still active after revoke by template")
	}
}

func TestRevoke_BulkConfirmation(t *testing.T) {
	e := newRTEnv(t)
	a, b := e.fetchJSON().Lease.ID, e.fetchJSON().Lease.ID

	// Not a terminal and no --yes: shows the plan, refuses, revokes nothing.
	_, errOut, code := e.run("yes\n", "revoke", "--agent", rtAgent.String(), "--reason", "compromised", "--admin-socket", e.socket)
	t.Logf("bulk revoke refused: %s", errOut)
	if code != exitUsage || !strings.Contains(errOut, "--yes") || !strings.Contains(errOut, "2 active lease") || !strings.Contains(errOut, a) {
		t.Fatalf("bulk revoke without --yes: exit %d, stderr %q", code, errOut)
	}
	if e.lease(a).State != api.StateActive || e.lease(b).State != api.StateActive {
		t.Fatal("a refused bulk revoke revoked leases")
	}

	out := e.mustRun("revoke", "--agent", rtAgent.String(), "--reason", "compromised", "--yes", "--admin-socket", e.socket)
	if !strings.Contains(out, "queued 2 lease") {
		t.Fatalf("bulk revoke --yes: %q", out)
	}
	if e.lease(a).State == api.StateActive || e.lease(b).State == api.StateActive {
		t.Fatal("bulk revoke left leases active")
	}
	out = e.mustRun("revoke", "--all", "--reason", "again", "--admin-socket", e.socket)
	if !strings.Contains(out, "nothing to revoke") {
		t.Fatalf("revoke --all with nothing active: %q", out)
	}
}

func TestAgent_QuarantineThenFetchDenied(t *testing.T) {
	e := newRTEnv(t)
	id := e.fetchJSON().Lease.ID
	out := e.mustRun("agent", "quarantine", rtAgent.String(), "--reason", "odd behaviour", "--admin-socket", e.socket)
	if !strings.Contains(out, "quarantined") {
		t.Fatalf("agent quarantine: %q", out)
	}
	if e.lease(id).State == api.StateActive {
		t.Fatal("quarantine left the agent's lease active")
	}
	_, errOut, code := e.run("", cmd([]string{"fetch", "--task", "report", "-p", "region=eu", "--reason", "x"}, e.as(rtAgent))...)
	t.Logf("denied fetch: %s", errOut)
	if code != exitDenied || !strings.Contains(errOut, "quarantined") {
		t.Fatalf("fetch of a quarantined agent: exit %d, stderr %q; want 3 naming the quarantine", code, errOut)
	}

	out = e.mustRun("agent", "list", "-o", "json", "--admin-socket", e.socket)
	var inv api.AgentsResponse
	if err := json.Unmarshal([]byte(out), &inv); err != nil {
		t.Fatalf("agent list -o json: %v\n%s", err, out)
	}
	found := false
	for _, a := range inv.Agents {
		found = found || a.ID == rtAgent.String() && a.State == api.AgentQuarantined
	}
	if !found || len(inv.Entries) != 1 {
		t.Fatalf("agent list: %+v", inv)
	}
	if out := e.mustRun("agent", "list", "--admin-socket", e.socket); !strings.Contains(out, "quarantined") || !strings.Contains(out, "report-*") {
		t.Fatalf("agent list table:\n%s", out)
	}

	// Reopening needs a person with the admin role, never the socket.
	if _, errOut, code := e.run("", "agent", "resume", rtAgent.String(), "--reason", "checked", "--admin-socket", e.socket); code != exitDenied ||
		!strings.Contains(errOut, "admin role") {
		t.Fatalf("resume through the admin socket: exit %d, %q", code, errOut)
	}
	e.mustRun(cmd([]string{"agent", "resume", rtAgent.String(), "--reason", "checked"}, e.as(rtAdmin))...)
	e.fetchJSON()

	_, errOut, code = e.run("", "agent", "pause", rtAgent.String(), "--admin-socket", e.socket)
	if code != exitUsage || !strings.Contains(errOut, "--reason") {
		t.Fatalf("pause without reason: exit %d, %q", code, errOut)
	}
}

func TestFreeze_StartEnd(t *testing.T) {
	e := newRTEnv(t)
	out := e.mustRun("freeze", "start", "--reason", "incident 42", "--admin-socket", e.socket)
	if !strings.Contains(out, "freeze on") {
		t.Fatalf("freeze start: %q", out)
	}
	_, errOut, code := e.run("", cmd([]string{"fetch", "--task", "report", "-p", "region=eu", "--reason", "x"}, e.as(rtAgent))...)
	if code != exitDenied || !strings.Contains(errOut, "freeze") {
		t.Fatalf("fetch during freeze: exit %d, stderr %q", code, errOut)
	}
	if _, errOut, code := e.run("", cmd([]string{"freeze", "end", "--reason", "resolved"}, e.as(rtRevoker))...); code != exitDenied ||
		!strings.Contains(errOut, "admin role") {
		t.Fatalf("freeze end by a revoker: exit %d, %q", code, errOut)
	}
	out = e.mustRun(cmd([]string{"freeze", "end", "--reason", "resolved"}, e.as(rtAdmin))...)
	if !strings.Contains(out, "freeze off") {
		t.Fatalf("freeze end: %q", out)
	}
	e.fetchJSON()
}

func TestExec_RunsWithSecretAndReleases(t *testing.T) {
	e := newRTEnv(t)
	script := `test "$LATCH_PASSWORD" = "s3cr3t'with quote" || exit 9; echo "lease=$LATCH_LEASE_ID"; exit 7`
	out, errOut, code := e.run("", cmd([]string{"exec", "--task", "report", "-p", "region=us", "--reason", "job"}, e.as(rtAgent), []string{"--", "sh", "-c", script})...)
	if code != 7 {
		t.Fatalf("exec: exit %d, want the command's 7\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	id := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(out), "lease="))
	if id == "" {
		t.Fatalf("exec output: %q", out)
	}
	if st := e.lease(id).State; st == api.StateActive {
		t.Fatalf("lease %s still active after exec", id)
	}

	_, errOut, code = e.run("", cmd([]string{"exec", "--task", "report", "-p", "region=us", "--reason", "job"}, e.as(rtAgent))...)
	if code != exitUsage {
		t.Fatalf("exec without a command: exit %d, %q", code, errOut)
	}
}

// A lease revoked while its command runs (an operator's quarantine) is
// no failure of exec's: it says the lease ended and keeps the command's
// exit status.
func TestExec_LeaseRevokedWhileRunning(t *testing.T) {
	e := newRTEnv(t)
	// Two FIFOs carry the signals: the command writes its lease ID to
	// one, the test revokes the lease and answers on the other.
	dir := t.TempDir()
	started, revoked := filepath.Join(dir, "started"), filepath.Join(dir, "revoked")
	for _, p := range []string{started, revoked} {
		if err := syscall.Mkfifo(p, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	script := `echo "$LATCH_LEASE_ID" > ` + started + `; read done < ` + revoked + `; exit 0`
	go func() {
		id, err := os.ReadFile(started)
		if err == nil {
			_, err = e.svc.Leases().Revoke(context.Background(), "admin-socket", "test", broker.RevokeSelector{Lease: strings.TrimSpace(string(id))})
		}
		if err != nil {
			t.Error(err)
		}
		_ = os.WriteFile(revoked, []byte("revoked\n"), 0o600)
	}()
	_, errOut, code := e.run("", cmd([]string{"exec", "--task", "report", "-p", "region=us", "--reason", "job"}, e.as(rtAgent), []string{"--", "sh", "-c", script})...)
	if code != 0 || !strings.Contains(errOut, "ended while the command ran") || strings.Contains(errOut, "WARNING") {
		t.Fatalf("exec after its lease was revoked: exit %d\n%s", code, errOut)
	}
}

func TestAuditTail(t *testing.T) {
	e := newRTEnv(t)
	for range 3 {
		e.fetchJSON()
	}
	out := e.mustRun("audit", "tail", "-n", "2", "-o", "json", "--admin-socket", e.socket)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		t.Fatalf("audit tail -n 2: %d lines:\n%s", len(lines), out)
	}
	var last api.Event
	if err := json.Unmarshal([]byte(lines[1]), &last); err != nil {
		t.Fatal(err)
	}
	out = e.mustRun("audit", "tail", "-n", "1000", "--type", "issue", "--admin-socket", e.socket)
	if n := strings.Count(out, " issue "); n != 3 {
		t.Fatalf("audit tail --type issue: %d issue events, want 3:\n%s", n, out)
	}
	if strings.Contains(out, rtSecret) {
		t.Fatal("audit tail shows a secret")
	}
}

func TestInterspersedFlags(t *testing.T) {
	e := newRTEnv(t)
	id := e.fetchJSON().Lease.ID
	before := e.mustRun(cmd([]string{"lease", "show", "-o", "json"}, e.as(rtViewer), []string{id})...)
	after := e.mustRun(cmd([]string{"lease", "show", id, "-o", "json"}, e.as(rtViewer))...)
	mixed := e.mustRun(cmd([]string{"lease", "show", "--output=json", id}, e.as(rtViewer))...)
	if before != after || after != mixed {
		t.Fatalf("flag order changes the output:\n%s\n%s\n%s", before, after, mixed)
	}

	// --help after an argument shows the help, and runs nothing.
	out, errOut, code := e.run("", "revoke", id, "--help")
	if code != 0 || !strings.Contains(out, "latch revoke - ") {
		t.Fatalf("revoke ID --help: exit %d\n%s%s", code, out, errOut)
	}

	// A bool flag and --name=value after the argument; a bulk revoke
	// with --yes=false on a non-terminal refuses.
	_, errOut, code = e.run("", "revoke", "--admin-socket="+e.socket, "--agent", rtAgent.String(), "--yes=false", "--reason=x")
	if code != exitUsage || !strings.Contains(errOut, "add --yes") {
		t.Fatalf("--yes=false: exit %d, %q", code, errOut)
	}
	out = e.mustRun("agent", "pause", rtAgent.String(), "--admin-socket="+e.socket, "-r", "flags after", "-o", "json")
	if !strings.Contains(out, `"state": "paused"`) {
		t.Fatalf("agent pause ID with flags after: %s", out)
	}
}

func TestAuditTail_Follow(t *testing.T) {
	e := newRTEnv(t)
	e.fetchJSON()
	out := newWatchBuffer(`"type":"pause"`)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		app := newApp()
		app.Writer, app.ErrWriter, app.Reader = out, out, strings.NewReader("")
		done <- app.RunContext(ctx, []string{"latch", "audit", "tail", "-f", "-n", "0", "-o", "json", "--agent", rtAgent.String(), "--admin-socket", e.socket})
	}()
	// tail asks for the stream once it has read the head; a pause from
	// then on is after the head, and the server replays what is after the
	// head, so tail sees it however soon the stream serves.
	select {
	case <-e.eventStreams:
	case err := <-done:
		t.Fatalf("audit tail -f ended before following (%v):\n%s", err, out)
	case <-time.After(10 * time.Second):
		t.Fatalf("audit tail -f asked for no event stream:\n%s", out)
	}
	cl := client.NewUnix(e.socket)
	if _, err := cl.PauseAgent(ctx, rtAgent.String(), "test"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-out.seen:
	case err := <-done:
		t.Fatalf("audit tail -f ended (%v) without a pause event:\n%s", err, out)
	case <-time.After(10 * time.Second):
		t.Fatalf("audit tail -f printed no pause event:\n%s", out)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("audit tail -f ended with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("audit tail -f did not end with its context")
	}
}

func TestExec_ForwardsSignals(t *testing.T) {
	e := newRTEnv(t)
	out := newWatchBuffer("ready ")
	code := make(chan int, 1)
	old := cli.OsExiter
	cli.OsExiter = func(c int) { code <- c }
	defer func() { cli.OsExiter = old }()
	script := `trap 'echo "got USR1"; exit 42' USR1; echo "ready $LATCH_LEASE_ID"; while :; do sleep 0.05; done`
	go func() {
		app := newApp()
		app.Writer, app.ErrWriter, app.Reader = out, out, strings.NewReader("")
		if err := app.Run(cmd([]string{"latch", "exec", "--task", "report", "-p", "region=eu", "--reason", "signal test"}, e.as(rtAgent), []string{"--", "sh", "-c", script})); err != nil {
			out.Write([]byte(err.Error()))
			code <- exitCode(err)
			return
		}
		code <- 0
	}()
	select {
	case <-out.seen:
	case c := <-code:
		t.Fatalf("exec ended (exit %d) before the command was ready:\n%s", c, out)
	case <-time.After(10 * time.Second):
		t.Fatalf("exec did not start the command:\n%s", out)
	}
	// latch is this test process: while exec runs, it catches USR1 and
	// passes it on.
	if err := syscall.Kill(os.Getpid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-code:
		if c != 42 || !strings.Contains(out.String(), "got USR1") {
			t.Fatalf("exec: exit %d, want the command's 42 after USR1:\n%s", c, out)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("exec did not end after USR1:\n%s", out)
	}
	line := out.String()[strings.Index(out.String(), "ready ")+len("ready "):]
	id := strings.Fields(line)[0]
	if st := e.lease(id).State; st == api.StateActive {
		t.Fatalf("lease %s still active after exec", id)
	}
}

func TestApproval_ListShowApproveThenPickup(t *testing.T) {
	e := newRTEnv(t)
	out, errOut, code := e.run("", cmd([]string{"fetch", "--task", "ticket", "-p", "ticket=42", "--reason", "fix it", "-o", "json"}, e.as(rtAgent))...)
	var res fetchJSON
	if code != exitPending || json.Unmarshal([]byte(out), &res) != nil || res.Approval == nil {
		t.Fatalf("fetch: exit %d, %s %s", code, out, errOut)
	}
	id := res.Approval.ID

	out, errOut, code = e.run("", cmd([]string{"approval", "list", "--status", "pending"}, e.as(rtApprover))...)
	if code != 0 || !strings.Contains(out, id) || !strings.Contains(out, "0/1") {
		t.Fatalf("approval list: exit %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = e.run("", cmd([]string{"approval", "show", id}, e.as(rtApprover))...)
	if code != 0 || !strings.Contains(out, "Would mint") || !strings.Contains(out, "fix it") || !strings.Contains(out, "ticket=42") {
		t.Fatalf("approval show must show the agent's reason, params and what would be minted: exit %d\n%s%s", code, out, errOut)
	}
	if _, errOut, code = e.run("", cmd([]string{"approval", "approve", id, "--reason", "ok"}, e.as(rtRevoker))...); code != exitDenied {
		t.Fatalf("a revoker approving: exit %d, %s; want 3", code, errOut)
	}
	if _, _, code = e.run("", cmd([]string{"approval", "approve", id}, e.as(rtApprover))...); code != exitUsage {
		t.Fatalf("approve without --reason: exit %d, want 2", code)
	}
	out, errOut, code = e.run("", cmd([]string{"approval", "approve", id, "--reason", "ticket checked"}, e.as(rtApprover))...)
	if code != 0 || !strings.Contains(out, "is approved") {
		t.Fatalf("approve: exit %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = e.run("", cmd([]string{"fetch", "--task", "ticket", "-p", "ticket=42", "--reason", "fix it", "--approval-id", id}, e.as(rtAgent))...)
	if code != 0 || !strings.Contains(out, "export LATCH_PASSWORD=") {
		t.Fatalf("pickup: exit %d\n%s%s", code, out, errOut)
	}
	if _, _, code = e.run("", cmd([]string{"fetch", "--task", "ticket", "-p", "ticket=42", "--reason", "fix it", "--approval-id", id}, e.as(rtAgent))...); code == 0 {
		t.Fatal("a second pickup of the same approval succeeded")
	}
}

func TestReport(t *testing.T) {
	e := newRTEnv(t)
	if err := e.svc.SetPolicy(context.Background(), brokertest.LoadPolicy(t, rtPolicy, rtTemplates), "test"); err != nil {
		t.Fatal(err)
	}
	e.fetchJSON()

	var res api.ReportResponse
	out := e.mustRun(cmd([]string{"report", "-o", "json"}, e.as(rtViewer))...)
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("report -o json: %v\n%s", err, out)
	}
	if len(res.Grants) != 2 || res.Grants[0].Template != "report" || res.Grants[0].LastAgent != rtAgent.String() ||
		!res.Grants[1].LastUsed.IsZero() || res.Grants[1].Owner != "spiffe://example.org/ops/bob" {
		t.Fatalf("report = %+v; want report used by %s, ticket never", res.Grants, rtAgent)
	}
	table, errOut, code := e.run("", cmd([]string{"report"}, e.as(rtViewer))...)
	if code != 0 || !strings.Contains(table, "spiffe://example.org/agent/report-*  spiffe://example.org/ops/bob") ||
		!strings.Contains(errOut, "2 grant(s)") {
		t.Fatalf("report table: exit %d\n%s%s", code, table, errOut)
	}
	// Both were granted moments ago: none is unused for an hour.
	table, errOut, code = e.run("", cmd([]string{"report", "--unused", "1h"}, e.as(rtViewer))...)
	if code != 0 || strings.Contains(table, "report-*") || !strings.Contains(errOut, "no grant unused for 1h or more: a grant counts from the day it was granted") {
		t.Fatalf("report --unused 1h: exit %d\n%s%s", code, table, errOut)
	}
	if _, errOut, code := e.run("", cmd([]string{"report", "--unused", "30days"}, e.as(rtViewer))...); code != exitUsage || !strings.Contains(errOut, "30d") {
		t.Fatalf("report --unused 30days: exit %d, %q; want a usage error showing 30d", code, errOut)
	}
	if _, _, code := e.run("", cmd([]string{"report"}, e.as(rtAgent))...); code != 3 {
		t.Fatalf("an agent reading the report: exit %d, want 3", code)
	}
}

// The CLI reaches the server by --addr host:port, as server.listen
// writes it.
func TestFetch_AddrHostPort(t *testing.T) {
	e := newRTEnv(t)
	flags := e.as(rtAgent)
	flags[1] = strings.TrimPrefix(e.url, "https://")
	out := e.mustRun(cmd([]string{"fetch", "--task", "report", "-p", "region=eu", "--reason", "nightly run"}, flags)...)
	if !strings.Contains(out, "export LATCH_LEASE_ID='") {
		t.Fatalf("fetch --addr %s: %s", flags[1], out)
	}
}

// --addr takes host:port as server.listen writes it, or a URL.
func TestServerURL(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:8443":         "https://127.0.0.1:8443",
		"latch.internal:8443":    "https://latch.internal:8443",
		"https://127.0.0.1:8443": "https://127.0.0.1:8443",
		"http://admin-socket":    "http://admin-socket",
		"[::1]:8443":             "https://[::1]:8443",
	} {
		if got := serverURL(in); got != want {
			t.Errorf("serverURL(%q) = %q, want %q", in, got, want)
		}
	}
}
