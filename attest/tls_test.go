package attest_test

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/latchbroker/latch/attest"
	"github.com/latchbroker/latch/attest/attesttest"
)

// get calls url with c and returns the status, the refusal kind header and
// the body.
func get(t *testing.T, c *http.Client, url string) (int, string, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("X-Attest-Kind"), strings.TrimSpace(string(b))
}

func mtlsClient(w *world, svid x509svid.Source) *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: attest.ClientTLSConfig(svid, w.ca.X509Bundle(), serverID)}}
}

func TestServerTLS(t *testing.T) {
	w := newWorld(t)
	var reached atomic.Int32
	h := identifyHandler(w.v)
	srv := startServer(t, w.v, w.ca.X509SVID(serverID), http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		h.ServeHTTP(rw, r)
	}))
	url := srv.url

	t.Run("mTLS", func(t *testing.T) {
		c, err := attest.NewHTTPClient(attest.NewSource(w.ca.X509SVID(agentID), w.ca.X509Bundle(), nil, nil), serverID, attest.MethodX509)
		if err != nil {
			t.Fatal(err)
		}
		if code, kind, body := get(t, c, url); code != http.StatusOK || body != agentID.String()+" x509" {
			t.Fatalf("got %d %s %q", code, kind, body)
		}
	})
	t.Run("bearer", func(t *testing.T) {
		c, err := attest.NewHTTPClient(attest.NewSource(nil, w.ca.X509Bundle(), nil, w.ca.JWTSource(agentID)), serverID, attest.MethodJWT)
		if err != nil {
			t.Fatal(err)
		}
		if code, kind, body := get(t, c, url); code != http.StatusOK || body != agentID.String()+" jwt" {
			t.Fatalf("got %d %s %q", code, kind, body)
		}
	})

	refusals := []struct {
		name   string
		client *http.Client
		want   *attest.Error
	}{
		{"ErrNoCredential", mtlsClient(w, nil), attest.ErrNoCredential},
		{"ErrExpired client certificate", mtlsClient(w, w.ca.X509SVID(agentID, attesttest.Expired())), attest.ErrExpired},
		{"ErrBadCertificate CA=true client certificate", mtlsClient(w, w.ca.X509SVID(agentID, attesttest.LeafIsCA())), attest.ErrBadCertificate},
		{"ErrUntrusted client certificate from another CA", mtlsClient(w, w.other.X509SVID(agentID)), attest.ErrUntrusted},
		{"ErrSeveralCredentials", &http.Client{Transport: &attest.BearerTransport{
			Base:     &http.Transport{TLSClientConfig: attest.ClientTLSConfig(w.ca.X509SVID(agentID), w.ca.X509Bundle(), serverID)},
			Source:   w.ca.JWTSource(agentID),
			Audience: serverID,
		}}, attest.ErrSeveralCredentials},
		{"ErrWrongAudience bearer for another server", &http.Client{Transport: &attest.BearerTransport{
			Base:     &http.Transport{TLSClientConfig: attest.ClientTLSConfig(nil, w.ca.X509Bundle(), serverID)},
			Source:   w.ca.JWTSource(agentID),
			Audience: spiffeid.RequireFromPath(td, "/vault"),
		}}, attest.ErrWrongAudience},
	}
	for _, tt := range refusals {
		t.Run(tt.name, func(t *testing.T) {
			code, kind, body := get(t, tt.client, url)
			if code != http.StatusUnauthorized || kind != string(tt.want.Kind) || body == "" {
				t.Fatalf("got %d %q %q; want 401 %q", code, kind, body, tt.want.Kind)
			}
		})
	}

	t.Run("TLS 1.2 client refused in the handshake", func(t *testing.T) {
		before := reached.Load()
		cfg := attest.ClientTLSConfig(w.ca.X509SVID(agentID), w.ca.X509Bundle(), serverID)
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
		_, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}).Get(url)
		if alert := tlsAlert(err); alert != "tls: protocol version not supported" {
			t.Fatalf("TLS 1.2 client: err = %v (alert %q); want the protocol_version alert", err, alert)
		}
		if reached.Load() != before {
			t.Fatal("a TLS 1.2 request reached the handler")
		}
		// The server logs the failed handshake on its own goroutine, which
		// may run after the client has already seen the alert.
		const want = "client offered only unsupported versions: [303]"
		deadline := time.Now().Add(5 * time.Second)
		for !strings.Contains(srv.log.String(), want) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if log := srv.log.String(); !strings.Contains(log, want) {
			t.Fatalf("server log lacks the refused TLS 1.2 handshake:\n%s", log)
		}
	})
	t.Run("plaintext refused", func(t *testing.T) {
		before := reached.Load()
		resp, err := http.Get("http" + strings.TrimPrefix(url, "https"))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("plaintext request: status %d", resp.StatusCode)
			}
		}
		if reached.Load() != before {
			t.Fatal("a plaintext request reached the handler")
		}
	})
	t.Run("client refuses a server with another ID", func(t *testing.T) {
		cfg := attest.ClientTLSConfig(w.ca.X509SVID(agentID), w.ca.X509Bundle(), spiffeid.RequireFromPath(td, "/not-latch"))
		_, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}).Get(url)
		if err == nil || !strings.Contains(err.Error(), "unexpected ID") {
			t.Fatalf("err = %v; want the server refused for its ID", err)
		}
	})
	t.Run("client refuses a server from another CA", func(t *testing.T) {
		cfg := attest.ClientTLSConfig(w.ca.X509SVID(agentID), attesttest.New(t, td).X509Bundle(), serverID)
		if _, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}).Get(url); err == nil {
			t.Fatal("client trusted a server its bundle does not cover")
		}
	})
}

// tlsAlert returns the TLS alert the peer sent, if err is one. crypto/tls
// keeps its alert type unexported for TCP connections, so this is the
// narrowest check available: a "remote error" whose text is the alert's.
func tlsAlert(err error) string {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "remote error" {
		return op.Err.Error()
	}
	return ""
}

func TestServerTLSConfig(t *testing.T) {
	w := newWorld(t)
	t.Run("refuses an SVID for another ID", func(t *testing.T) {
		if _, err := w.v.ServerTLSConfig(w.ca.X509SVID(agentID)); err == nil || !strings.Contains(err.Error(), serverID.String()) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("TLS 1.3 only, client certificate optional", func(t *testing.T) {
		cfg, err := w.v.ServerTLSConfig(w.ca.X509SVID(serverID))
		if err != nil {
			t.Fatal(err)
		}
		if cfg.MinVersion != tls.VersionTLS13 || cfg.ClientAuth != tls.RequestClientCert {
			t.Fatalf("MinVersion %x ClientAuth %v", cfg.MinVersion, cfg.ClientAuth)
		}
	})
	t.Run("presents the current SVID on each handshake", func(t *testing.T) {
		src := &swapSource{}
		first := w.ca.X509SVID(serverID)
		src.svid.Store(first)
		url := startServer(t, w.v, src, identifyHandler(w.v)).url
		serial := func() string {
			c := mtlsClient(w, w.ca.X509SVID(agentID))
			resp, err := c.Get(url)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp.TLS.PeerCertificates[0].SerialNumber.String()
		}
		if got := serial(); got != first.Certificates[0].SerialNumber.String() {
			t.Fatal("first SVID not presented")
		}
		second := w.ca.X509SVID(serverID)
		src.svid.Store(second)
		if got := serial(); got != second.Certificates[0].SerialNumber.String() {
			t.Fatal("rotated SVID not presented to a new connection")
		}
	})
}

type swapSource struct{ svid atomic.Pointer[x509svid.SVID] }

func (s *swapSource) GetX509SVID() (*x509svid.SVID, error) { return s.svid.Load(), nil }
