package attest_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/latchbroker/latch/attest"
	"github.com/latchbroker/latch/attest/attesttest"
)

type files struct {
	dir                                   string
	cert, key, bundle, jwtBundle, jwtSVID string
}

func newFiles(t *testing.T) files {
	dir := t.TempDir()
	return files{
		dir:       dir,
		cert:      filepath.Join(dir, "svid.pem"),
		key:       filepath.Join(dir, "svid.key"),
		bundle:    filepath.Join(dir, "bundle.pem"),
		jwtBundle: filepath.Join(dir, "bundle.json"),
		jwtSVID:   filepath.Join(dir, "jwt-svid"),
	}
}

func (f files) config() attest.FilesConfig {
	return attest.FilesConfig{
		CertFile: f.cert, KeyFile: f.key, BundleFile: f.bundle, JWTBundleFile: f.jwtBundle,
		PollInterval: 10 * time.Millisecond,
	}
}

func openFiles(t *testing.T, cfg attest.FilesConfig) *attest.Source {
	t.Helper()
	src, err := attest.OpenFiles(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = src.Close() })
	return src
}

func verifierOn(t *testing.T, src *attest.Source, domains ...spiffeid.TrustDomain) *attest.Verifier {
	t.Helper()
	v, err := attest.NewVerifier(attest.Config{ID: serverID, TrustDomains: domains, X509Bundles: src, JWTBundles: src})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// eventually polls cond for up to 5 s: the file source polls every 10 ms.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func serialOf(t *testing.T, src x509svid.Source) string {
	t.Helper()
	s, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	return s.Certificates[0].SerialNumber.String()
}

func TestOpenFiles(t *testing.T) {
	ca := attesttest.New(t, td)
	f := newFiles(t)
	attesttest.WriteSVID(t, ca.Intermediate().X509SVID(serverID), f.cert, f.key)
	ca.WriteBundle(f.bundle)
	ca.WriteJWTBundle(f.jwtBundle)
	src := openFiles(t, f.config())

	if s, err := src.GetX509SVID(); err != nil || s.ID != serverID {
		t.Fatalf("GetX509SVID = %v, %v", s, err)
	}
	v := verifierOn(t, src)
	if _, err := v.ServerTLSConfig(src); err != nil {
		t.Fatal(err)
	}
	if _, err := v.VerifyX509(ca.X509SVID(agentID).Certificates); err != nil {
		t.Fatalf("X.509-SVID against the bundle file: %v", err)
	}
	if _, err := v.VerifyJWT(ca.JWTSVID(agentID, aud)); err != nil {
		t.Fatalf("JWT-SVID against the JWT bundle file: %v", err)
	}
	if _, err := src.FetchJWTSVID(t.Context(), jwtsvid.Params{Audience: serverID.String()}); !errors.Is(err, attest.ErrNoJWTSource) {
		t.Fatalf("FetchJWTSVID without a JWT-SVID file: %v", err)
	}
	if !strings.Contains(src.String(), f.cert) {
		t.Fatalf("String() = %q does not name the files", src)
	}
}

func TestOpenFiles_FollowsChanges(t *testing.T) {
	ca := attesttest.New(t, td)
	f := newFiles(t)
	attesttest.WriteSVID(t, ca.X509SVID(serverID), f.cert, f.key)
	ca.WriteBundle(f.bundle)
	ca.WriteJWTBundle(f.jwtBundle)
	src := openFiles(t, f.config())
	v := verifierOn(t, src)

	t.Run("rotated SVID", func(t *testing.T) {
		before := serialOf(t, src)
		next := ca.X509SVID(serverID)
		attesttest.WriteSVID(t, next, f.cert, f.key)
		want := next.Certificates[0].SerialNumber.String()
		eventually(t, "the rotated SVID is served", func() bool { return serialOf(t, src) == want })
		if want == before {
			t.Fatal("test minted the same serial twice")
		}
	})
	t.Run("half-written SVID keeps the last good one", func(t *testing.T) {
		good := serialOf(t, src)
		// A new certificate whose key has not been written yet.
		other := ca.X509SVID(serverID)
		tmp := filepath.Join(f.dir, "other.key")
		attesttest.WriteSVID(t, other, f.cert, tmp)
		time.Sleep(100 * time.Millisecond) // ten polls
		if got := serialOf(t, src); got != good {
			t.Fatal("a certificate without its key was swapped in")
		}
		if err := src.Reload(); err == nil || !strings.Contains(err.Error(), f.cert) {
			t.Fatalf("Reload of inconsistent files = %v; want an error naming the file", err)
		}
		if err := os.Rename(tmp, f.key); err != nil {
			t.Fatal(err)
		}
		want := other.Certificates[0].SerialNumber.String()
		eventually(t, "the completed SVID is served", func() bool { return serialOf(t, src) == want })
	})
	t.Run("new trust bundle", func(t *testing.T) {
		next := attesttest.New(t, td)
		_, err := v.VerifyX509(next.X509SVID(agentID).Certificates)
		wantRefusal(t, err, attest.ErrUntrusted)
		next.WriteBundle(f.bundle)
		next.WriteJWTBundle(f.jwtBundle)
		eventually(t, "the new bundles are trusted", func() bool {
			_, errX := v.VerifyX509(next.X509SVID(agentID).Certificates)
			_, errJ := v.VerifyJWT(next.JWTSVID(agentID, aud))
			return errX == nil && errJ == nil
		})
		_, err = v.VerifyX509(ca.X509SVID(agentID).Certificates)
		wantRefusal(t, err, attest.ErrUntrusted)
	})
}

func TestOpenFiles_Formats(t *testing.T) {
	ca := attesttest.New(t, td)
	other := attesttest.New(t, otherTD)
	f := newFiles(t)
	attesttest.WriteSVID(t, ca.X509SVID(agentID), f.cert, f.key)
	// The X.509 bundle as a SPIFFE bundle, the JWT bundle as a plain JWKS.
	ca.WriteJWTBundle(f.bundle)
	jwks, err := ca.JWTBundle().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.jwtBundle, jwks, 0o600); err != nil {
		t.Fatal(err)
	}
	fed := filepath.Join(f.dir, "other.json")
	other.WriteJWTBundle(fed)
	cfg := f.config()
	cfg.FederatedBundleFiles = map[spiffeid.TrustDomain]string{otherTD: fed}
	src := openFiles(t, cfg)
	v := verifierOn(t, src, td, otherTD)
	for name, check := range map[string]func() error{
		"x509 from SPIFFE bundle": func() error { _, err := v.VerifyX509(ca.X509SVID(agentID).Certificates); return err },
		"jwt from plain JWKS":     func() error { _, err := v.VerifyJWT(ca.JWTSVID(agentID, aud)); return err },
		"federated x509": func() error {
			_, err := v.VerifyX509(other.X509SVID(spiffeid.RequireFromPath(otherTD, "/a")).Certificates)
			return err
		},
		"federated jwt": func() error {
			_, err := v.VerifyJWT(other.JWTSVID(spiffeid.RequireFromPath(otherTD, "/a"), aud))
			return err
		},
		"federated CA can't speak for example.org": func() error {
			_, err := v.VerifyX509(other.X509SVID(agentID).Certificates)
			if errors.Is(err, attest.ErrUntrusted) {
				return nil
			}
			return errors.New("accepted")
		},
	} {
		t.Run(name, func(t *testing.T) {
			if err := check(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestOpenFiles_JWTSVIDFile(t *testing.T) {
	ca := attesttest.New(t, td)
	f := newFiles(t)
	ca.WriteBundle(f.bundle)
	if err := os.WriteFile(f.jwtSVID, []byte(ca.JWTSVID(agentID, aud)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	src := openFiles(t, attest.FilesConfig{BundleFile: f.bundle, JWTSVIDFile: f.jwtSVID, TrustDomain: td, PollInterval: -1})
	svid, err := src.FetchJWTSVID(t.Context(), jwtsvid.Params{Audience: serverID.String()})
	if err != nil || svid.ID != agentID {
		t.Fatalf("FetchJWTSVID = %v, %v", svid, err)
	}
	if _, err := src.FetchJWTSVID(t.Context(), jwtsvid.Params{Audience: "spiffe://example.org/vault"}); err == nil {
		t.Fatal("a token for latch was handed out for another audience")
	}
	if _, err := src.GetX509SVID(); err == nil {
		t.Fatal("GetX509SVID without SVID files succeeded")
	}
}

func TestOpenFiles_Errors(t *testing.T) {
	ca := attesttest.New(t, td)
	f := newFiles(t)
	attesttest.WriteSVID(t, ca.X509SVID(agentID), f.cert, f.key)
	tests := map[string]struct {
		cfg  attest.FilesConfig
		want string
	}{
		"no bundle":          {attest.FilesConfig{CertFile: f.cert, KeyFile: f.key}, "bundle file is required"},
		"missing bundle":     {attest.FilesConfig{CertFile: f.cert, KeyFile: f.key, BundleFile: f.bundle}, f.bundle},
		"cert without key":   {attest.FilesConfig{CertFile: f.cert, BundleFile: f.bundle}, "both a certificate and a key"},
		"no trust domain":    {attest.FilesConfig{BundleFile: f.cert}, "trust domain must be configured"},
		"bundle is not PEM":  {attest.FilesConfig{CertFile: f.cert, KeyFile: f.key, BundleFile: f.key}, f.key},
		"key is not the key": {attest.FilesConfig{CertFile: f.cert, KeyFile: f.cert, BundleFile: f.cert}, f.cert},
		"JWT bundle is PEM":  {attest.FilesConfig{CertFile: f.cert, KeyFile: f.key, BundleFile: f.cert, JWTBundleFile: f.cert}, "JWT bundle " + f.cert},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := attest.OpenFiles(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v; want it to mention %q", err, tt.want)
			}
		})
	}
}

func TestOpenWorkloadAPI_Errors(t *testing.T) {
	t.Run("no address", func(t *testing.T) {
		t.Setenv("SPIFFE_ENDPOINT_SOCKET", "")
		_, err := attest.OpenWorkloadAPI(t.Context(), attest.WorkloadAPIConfig{})
		if err == nil || !strings.Contains(err.Error(), "SPIFFE_ENDPOINT_SOCKET") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("bad address", func(t *testing.T) {
		_, err := attest.OpenWorkloadAPI(t.Context(), attest.WorkloadAPIConfig{Addr: "/no/scheme.sock"})
		if err == nil || !strings.Contains(err.Error(), "/no/scheme.sock") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("nobody listening", func(t *testing.T) {
		addr := "unix://" + filepath.Join(t.TempDir(), "agent.sock")
		t.Setenv("SPIFFE_ENDPOINT_SOCKET", addr)
		start := time.Now()
		_, err := attest.OpenWorkloadAPI(context.Background(), attest.WorkloadAPIConfig{ReadyTimeout: 300 * time.Millisecond})
		if !errors.Is(err, attest.ErrNotReady) || !strings.Contains(err.Error(), addr) {
			t.Fatalf("err = %v; want ErrNotReady naming %s", err, addr)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("took %s despite a 300ms ready timeout", d)
		}
	})
}
