package attesttest_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/latchbroker/latch/attest/attesttest"
)

var (
	td    = spiffeid.RequireTrustDomainFromString("example.org")
	agent = spiffeid.RequireFromPath(td, "/agent/a")
	aud   = []string{"spiffe://example.org/latch"}
)

// The good SVIDs must pass go-spiffe's own verification, or tests built on
// them prove nothing.
func TestCA_GoodSVIDsVerifyWithGoSPIFFE(t *testing.T) {
	ca := attesttest.New(t, td)
	for name, c := range map[string]*attesttest.CA{"root": ca, "intermediate": ca.Intermediate().Intermediate()} {
		t.Run(name, func(t *testing.T) {
			svid := c.X509SVID(agent)
			id, _, err := x509svid.Verify(svid.Certificates, ca.X509Bundle())
			if err != nil || id != agent {
				t.Fatalf("x509svid.Verify = %v, %v", id, err)
			}
			// Round trip through go-spiffe's strict parser too.
			cert, key, err := svid.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := x509svid.Parse(cert, key); err != nil {
				t.Fatalf("x509svid.Parse: %v", err)
			}
			tok, err := jwtsvid.ParseAndValidate(c.JWTSVID(agent, aud), c.JWTBundle(), aud)
			if err != nil || tok.ID != agent {
				t.Fatalf("jwtsvid.ParseAndValidate = %v, %v", tok, err)
			}
		})
	}
}

// Each bad shape must be refused by go-spiffe for the reason it is named
// after.
func TestCA_BadSVIDsFailGoSPIFFE(t *testing.T) {
	ca := attesttest.New(t, td)
	other := attesttest.New(t, spiffeid.RequireTrustDomainFromString("other.org"))
	sameKID := attesttest.New(t, td, attesttest.WithJWTKeyID(ca.JWTKeyID()))
	x509Cases := map[string]*x509svid.SVID{
		"expired":         ca.X509SVID(agent, attesttest.Expired()),
		"not yet valid":   ca.X509SVID(agent, attesttest.NotYetValid()),
		"CA leaf":         ca.X509SVID(agent, attesttest.LeafIsCA()),
		"keyCertSign":     ca.X509SVID(agent, attesttest.KeyCertSign()),
		"no URI SAN":      ca.X509SVID(agent, attesttest.NoURISAN()),
		"two URI SANs":    ca.X509SVID(agent, attesttest.URISANs(agent.String(), "spiffe://example.org/agent/b")),
		"other authority": other.X509SVID(agent),
	}
	for name, svid := range x509Cases {
		t.Run(name, func(t *testing.T) {
			if _, _, err := x509svid.Verify(svid.Certificates, ca.X509Bundle()); err == nil {
				t.Fatal("go-spiffe accepted it")
			}
		})
	}
	bundles := jwtbundle.NewSet(ca.JWTBundle(), other.JWTBundle())
	jwtCases := map[string]string{
		"expired":     ca.JWTSVID(agent, aud, attesttest.IssuedAt(time.Now().Add(-time.Hour)), attesttest.Lifetime(time.Minute)),
		"alg none":    ca.JWTSVID(agent, aud, attesttest.AlgNone()),
		"HS256":       ca.JWTSVID(agent, aud, attesttest.HS256([]byte("secret"))),
		"unknown kid": ca.JWTSVID(agent, aud, attesttest.KeyID("nope")),
		"same kid":    sameKID.JWTSVID(agent, aud),
		"wrong aud":   ca.JWTSVID(agent, []string{"spiffe://example.org/other"}),
	}
	for name, tok := range jwtCases {
		t.Run(name, func(t *testing.T) {
			if _, err := jwtsvid.ParseAndValidate(tok, bundles, aud); err == nil {
				t.Fatal("go-spiffe accepted it")
			}
		})
	}
}

func TestCA_WriteFilesLoadWithGoSPIFFE(t *testing.T) {
	ca := attesttest.New(t, td)
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "svid.pem"), filepath.Join(dir, "key.pem")
	attesttest.WriteSVID(t, ca.Intermediate().X509SVID(agent), cert, key)
	ca.WriteBundle(filepath.Join(dir, "bundle.pem"))
	ca.WriteJWTBundle(filepath.Join(dir, "bundle.json"))

	svid, err := x509svid.Load(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	b, err := x509bundle.Load(td, filepath.Join(dir, "bundle.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, b); err != nil {
		t.Fatal(err)
	}
	sb, err := spiffebundle.Load(td, filepath.Join(dir, "bundle.json"))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := sb.FindJWTAuthority(ca.JWTKeyID()); !ok || len(sb.X509Authorities()) != 1 {
		t.Fatalf("SPIFFE bundle lacks an authority: %d X.509, kid found %v", len(sb.X509Authorities()), ok)
	}
}
