package attest

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/latchbroker/latch/attest"
	"github.com/latchbroker/latch/integration/stack"
)

var (
	serverID = spiffeid.RequireFromPath(stack.TrustDomain, "/latch")
	vaultID  = spiffeid.RequireFromPath(stack.TrustDomain, "/vault")
)

// register creates a registration entry for id that matches this test
// binary (and the agent process, which is the same binary) and removes it
// when the test ends.
func register(t testing.TB, id spiffeid.ID, x509TTL time.Duration) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	entryID, err := st.SPIRE.Register(t.Context(), stack.Entry{
		ID:        id,
		Selectors: []string{fmt.Sprintf("unix:uid:%d", os.Getuid()), "unix:path:" + exe},
		X509TTL:   x509TTL,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.SPIRE.Unregister(context.Background(), entryID) })
}

func openWorkloadAPI(t testing.TB, id spiffeid.ID) *attest.Source {
	t.Helper()
	src, err := attest.OpenWorkloadAPI(t.Context(), attest.WorkloadAPIConfig{Addr: st.SPIRE.WorkloadAPIAddr(), ID: id})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = src.Close() })
	return src
}

// latch is the server side as the broker wires it: its SVID and bundles
// from the Workload API, a Verifier on them, TLS 1.3 from the Verifier.
type latch struct {
	src *attest.Source
	v   *attest.Verifier
	url string
}

func startLatch(t *testing.T, x509TTL time.Duration) *latch {
	t.Helper()
	register(t, serverID, x509TTL)
	l := &latch{src: openWorkloadAPI(t, serverID)}
	var err error
	l.v, err = attest.NewVerifier(attest.Config{ID: serverID, X509Bundles: l.src, JWTBundles: l.src})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := l.v.ServerTLSConfig(l.src)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := l.v.Identify(r)
		if err != nil {
			w.Header().Set("X-Attest-Kind", string(attest.KindOf(err)))
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		fmt.Fprintf(w, "%s %s %s", id.ID, id.Method, id.Serial)
	}))
	srv.Listener = tls.NewListener(srv.Listener, cfg)
	srv.Start()
	t.Cleanup(srv.Close)
	l.url = "https://" + srv.Listener.Addr().String()
	return l
}

// runAgent runs exe as the agent process against latch with env added.
func runAgent(t *testing.T, exe string, env ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), envAgent+"=1", "SPIFFE_ENDPOINT_SOCKET="+st.SPIRE.WorkloadAPIAddr(), envServerID+"="+serverID.String())
	cmd.Env = append(cmd.Env, env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("run agent process: %v", err)
	}
	return out.String(), errOut.String(), cmd.ProcessState.ExitCode()
}

// An agent process gets its X.509-SVID from the SPIRE agent and latch
// identifies it by its SPIFFE ID, over mutual TLS and with a JWT-SVID the
// same process fetched from the Workload API.
func TestAgentProcess_IdentifiedBySPIFFEID(t *testing.T) {
	l := startLatch(t, 0)
	agentID := spiffeid.RequireFromPath(stack.TrustDomain, "/agent/it-process")
	register(t, agentID, 0)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, method := range []attest.Method{attest.MethodX509, attest.MethodJWT} {
		t.Run(string(method), func(t *testing.T) {
			stdout, stderr, code := runAgent(t, exe, envAgentID+"="+agentID.String(), envURL+"="+l.url, envMethod+"="+string(method), envReadyTimeout+"=30s")
			want := fmt.Sprintf("200 %s %s", agentID, method)
			if code != 0 || !strings.HasPrefix(stdout, want) {
				t.Fatalf("agent process: exit %d, stdout %q, stderr %q; want %q", code, stdout, stderr, want)
			}
		})
	}
}

// A process SPIRE has no entry for gets a clear error naming the socket,
// within its ready timeout.
func TestAgentProcess_Unregistered(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// Same binary at another path: the unix:path selector no longer matches.
	copyPath := filepath.Join(t.TempDir(), "unregistered-agent")
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(copyPath, b, 0o700); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, stderr, code := runAgent(t, copyPath, envURL+"=https://127.0.0.1:1", envMethod+"=x509", envReadyTimeout+"=3s")
	if code != 2 || !strings.Contains(stderr, st.SPIRE.WorkloadAPIAddr()) || !strings.Contains(stderr, attest.ErrNotReady.Error()) {
		t.Fatalf("unregistered agent: exit %d, stderr %q; want exit 2 and ErrNotReady naming %s", code, stderr, st.SPIRE.WorkloadAPIAddr())
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Fatalf("took %s with a 3 s ready timeout", d)
	}
	t.Logf("unregistered agent's error: %s", strings.TrimSpace(stderr))
}

// JWT-SVIDs minted by the SPIRE server: accepted for latch's audience,
// refused for another.
func TestJWTSVID_MintedBySPIREServer(t *testing.T) {
	l := startLatch(t, 0)
	agentID := spiffeid.RequireFromPath(stack.TrustDomain, "/agent/it-jwt")
	ctx := t.Context()
	mint := func(ttl time.Duration, audience string, extra ...string) string {
		t.Helper()
		tok, err := st.SPIRE.MintJWTSVID(ctx, agentID, ttl, audience, extra...)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	// Over the real listener, as a bearer client without a certificate.
	bearer := func(token string) (int, string, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, l.url, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+token)
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: attest.ClientTLSConfig(nil, l.src, serverID)}}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("X-Attest-Kind"), string(body)
	}

	t.Run("audience server.id accepted", func(t *testing.T) {
		tok := mint(time.Minute, serverID.String())
		id, err := l.v.VerifyJWT(tok)
		if err != nil || id.ID != agentID || id.Method != attest.MethodJWT {
			t.Fatalf("VerifyJWT = %+v, %v", id, err)
		}
		if code, kind, body := bearer(tok); code != http.StatusOK || !strings.HasPrefix(body, agentID.String()+" jwt") {
			t.Fatalf("bearer request: %d %s %q", code, kind, body)
		}
	})
	refusals := []struct {
		name  string
		token func() string
		want  *attest.Error
	}{
		{"ErrWrongAudience", func() string { return mint(time.Minute, vaultID.String()) }, attest.ErrWrongAudience},
		{"ErrSeveralAudiences", func() string { return mint(time.Minute, serverID.String(), vaultID.String()) }, attest.ErrSeveralAudiences},
		{"ErrLifetimeTooLong", func() string { return mint(10*time.Minute, serverID.String()) }, attest.ErrLifetimeTooLong},
	}
	for _, tt := range refusals {
		t.Run(tt.name, func(t *testing.T) {
			tok := tt.token()
			if _, err := l.v.VerifyJWT(tok); !errors.Is(err, tt.want) {
				t.Fatalf("VerifyJWT: %v; want %s", err, tt.want.Kind)
			}
			if code, kind, _ := bearer(tok); code != http.StatusUnauthorized || kind != string(tt.want.Kind) {
				t.Fatalf("bearer request: %d %s; want 401 %s", code, kind, tt.want.Kind)
			}
		})
	}
}

// X.509-SVIDs minted by the SPIRE server verify against the bundle the
// Workload API delivers.
func TestX509SVID_MintedBySPIREServer(t *testing.T) {
	l := startLatch(t, 0)
	agentID := spiffeid.RequireFromPath(stack.TrustDomain, "/agent/it-minted")
	minted, err := st.SPIRE.MintX509SVID(t.Context(), agentID, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := x509svid.Parse(minted.CertPEM, minted.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	id, err := l.v.VerifyX509(svid.Certificates)
	if err != nil || id.ID != agentID || id.Serial != svid.Certificates[0].SerialNumber.Text(16) {
		t.Fatalf("VerifyX509 = %+v, %v", id, err)
	}
}

// SPIRE rotates an X.509-SVID at about half its TTL. With 20 s SVIDs on
// both sides, the client's and the server's Sources pick the new SVIDs up
// and new connections use them, with no restart of either.
func TestRotation_FollowedWithoutRestart(t *testing.T) {
	const ttl = 20 * time.Second
	l := startLatch(t, ttl)
	agentID := spiffeid.RequireFromPath(stack.TrustDomain, "/agent/it-rotation")
	register(t, agentID, ttl)
	client := openWorkloadAPI(t, agentID)
	c, err := attest.NewHTTPClient(client, serverID, attest.MethodX509)
	if err != nil {
		t.Fatal(err)
	}
	// call makes a request on a new connection and returns the client
	// certificate serial latch saw and the server certificate serial the
	// client saw.
	call := func() (clientSerial, serverSerial string) {
		t.Helper()
		c.CloseIdleConnections()
		resp, err := c.Get(l.url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		fields := strings.Fields(string(body))
		if resp.StatusCode != http.StatusOK || len(fields) != 3 || fields[0] != agentID.String() {
			t.Fatalf("request refused: %d %q", resp.StatusCode, body)
		}
		return fields[2], resp.TLS.PeerCertificates[0].SerialNumber.Text(16)
	}
	firstClient, firstServer := call()
	start := time.Now()
	deadline := start.Add(50 * time.Second)
	clientRotated, serverRotated := false, false
	for !(clientRotated && serverRotated) {
		if time.Now().After(deadline) {
			t.Fatalf("no rotation within %s: client rotated %v, server rotated %v", time.Since(start), clientRotated, serverRotated)
		}
		time.Sleep(time.Second)
		cs, ss := call()
		if cs != firstClient {
			clientRotated = true
			cur, err := client.GetX509SVID()
			if err != nil {
				t.Fatal(err)
			}
			if got := cur.Certificates[0].SerialNumber.Text(16); got != cs {
				// A second rotation between the two reads is possible but
				// would take another ~10 s.
				t.Logf("client source now holds %s, latch saw %s", got, cs)
			}
		}
		serverRotated = serverRotated || ss != firstServer
	}
	t.Logf("both SVIDs rotated and were used after %s", time.Since(start).Round(time.Second))
}
