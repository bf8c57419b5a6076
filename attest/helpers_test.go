package attest_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/latchbroker/latch/attest"
	"github.com/latchbroker/latch/attest/attesttest"
)

var (
	td       = spiffeid.RequireTrustDomainFromString("example.org")
	otherTD  = spiffeid.RequireTrustDomainFromString("other.org")
	serverID = spiffeid.RequireFromPath(td, "/latch")
	agentID  = spiffeid.RequireFromPath(td, "/agent/report-bot")
	aud      = []string{serverID.String()}
)

// world is one test's trust setup: our trust domain's CA, a federated
// one, and a Verifier that trusts both bundles but, unless told otherwise,
// accepts only example.org.
type world struct {
	ca, other *attesttest.CA
	now       time.Time
	v         *attest.Verifier
}

func newWorld(t testing.TB, configure ...func(*attest.Config)) *world {
	t.Helper()
	// JWT-SVIDs are also checked by go-spiffe against the wall clock, so
	// the injected clock stays near it; it is frozen so tests are exact.
	now := time.Now().Truncate(time.Second)
	clock := func() time.Time { return now }
	w := &world{
		ca:    attesttest.New(t, td, attesttest.WithClock(clock)),
		other: attesttest.New(t, otherTD, attesttest.WithClock(clock)),
		now:   now,
	}
	cfg := attest.Config{
		ID:          serverID,
		X509Bundles: x509bundle.NewSet(w.ca.X509Bundle(), w.other.X509Bundle()),
		JWTBundles:  jwtbundle.NewSet(w.ca.JWTBundle(), w.other.JWTBundle()),
		Now:         clock,
	}
	for _, c := range configure {
		c(&cfg)
	}
	v, err := attest.NewVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w.v = v
	return w
}

// wantRefusal asserts err is an *attest.Error of kind want, matched both
// ways the HTTP layer may match it, with a message fit to show.
func wantRefusal(t *testing.T, err error, want *attest.Error) {
	t.Helper()
	if err == nil {
		t.Fatalf("accepted; want %s", want.Kind)
	}
	if !errors.Is(err, want) {
		t.Fatalf("error = %v (kind %q); want kind %q", err, attest.KindOf(err), want.Kind)
	}
	var e *attest.Error
	if !errors.As(err, &e) || e.Kind != want.Kind || e.Message == "" {
		t.Fatalf("errors.As = %#v", e)
	}
}

func request(tlsState *tls.ConnectionState, authorization ...string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "https://latch.test/v1/credentials", nil)
	r.TLS = tlsState
	for _, a := range authorization {
		r.Header.Add("Authorization", a)
	}
	return r
}

func tls13(certs ...*x509.Certificate) *tls.ConnectionState {
	return &tls.ConnectionState{Version: tls.VersionTLS13, HandshakeComplete: true, PeerCertificates: certs}
}

// identifyHandler answers like the broker's HTTP layer will: 200 and the
// caller's ID, or 401 with the refusal kind and its safe message.
func identifyHandler(v *attest.Verifier) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := v.Identify(r)
		if err != nil {
			var e *attest.Error
			if !errors.As(err, &e) {
				http.Error(w, "internal error", http.StatusInternalServerError)
				return
			}
			w.Header().Set("X-Attest-Kind", string(e.Kind))
			http.Error(w, e.Message, http.StatusUnauthorized)
			return
		}
		fmt.Fprintf(w, "%s %s", id.ID, id.Method)
	})
}

// server is a test server using exactly the tls.Config the Verifier
// builds (httptest's StartTLS would add a certificate of its own).
type server struct {
	url string
	log *syncBuffer // the http.Server's error log: TLS handshake failures
}

func startServer(t *testing.T, v *attest.Verifier, svid x509svid.Source, h http.Handler) *server {
	t.Helper()
	cfg, err := v.ServerTLSConfig(svid)
	if err != nil {
		t.Fatal(err)
	}
	s := &server{log: &syncBuffer{}}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener = tls.NewListener(srv.Listener, cfg)
	srv.Config.ErrorLog = log.New(s.log, "", 0)
	srv.Start()
	t.Cleanup(srv.Close)
	s.url = "https://" + srv.Listener.Addr().String()
	return s
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
