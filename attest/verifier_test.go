package attest_test

import (
	"crypto/tls"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/latchbroker/latch/attest"
	"github.com/latchbroker/latch/attest/attesttest"
)

func TestVerifier_VerifyX509(t *testing.T) {
	w := newWorld(t)
	now := w.now
	foreign := spiffeid.RequireFromPath(otherTD, "/agent/x")
	tests := []struct {
		name string
		svid *x509svid.SVID
		want *attest.Error // nil: accepted
	}{
		{"valid", w.ca.X509SVID(agentID), nil},
		{"valid via intermediates", w.ca.Intermediate().Intermediate().X509SVID(agentID), nil},
		{"ErrExpired", w.ca.X509SVID(agentID, attesttest.Expired()), attest.ErrExpired},
		{"ErrExpired beyond skew", w.ca.X509SVID(agentID, attesttest.Validity(now.Add(-time.Hour), now.Add(-31*time.Second))), attest.ErrExpired},
		{"expired within skew", w.ca.X509SVID(agentID, attesttest.Validity(now.Add(-time.Hour), now.Add(-29*time.Second))), nil},
		{"ErrNotYetValid", w.ca.X509SVID(agentID, attesttest.NotYetValid()), attest.ErrNotYetValid},
		{"not yet valid within skew", w.ca.X509SVID(agentID, attesttest.Validity(now.Add(29*time.Second), now.Add(time.Hour))), nil},
		{"ErrForeignTrustDomain", w.other.X509SVID(foreign), attest.ErrForeignTrustDomain},
		{"ErrUntrusted chain to another trust domain", w.other.X509SVID(agentID), attest.ErrUntrusted},
		{"ErrUntrusted other key same trust domain", attesttest.New(t, td).X509SVID(agentID), attest.ErrUntrusted},
		{"ErrUntrusted expired and forged", attesttest.New(t, td).X509SVID(agentID, attesttest.Expired()), attest.ErrUntrusted},
		{"ErrBadCertificate CA=true leaf", w.ca.X509SVID(agentID, attesttest.LeafIsCA()), attest.ErrBadCertificate},
		{"ErrBadCertificate keyCertSign", w.ca.X509SVID(agentID, attesttest.KeyCertSign()), attest.ErrBadCertificate},
		{"ErrBadCertificate no URI SAN", w.ca.X509SVID(agentID, attesttest.NoURISAN()), attest.ErrBadCertificate},
		{"ErrBadCertificate two URI SANs", w.ca.X509SVID(agentID, attesttest.URISANs(agentID.String(), "spiffe://example.org/agent/other")), attest.ErrBadCertificate},
		{"ErrBadCertificate URI SAN not SPIFFE", w.ca.X509SVID(agentID, attesttest.URISANs("https://example.org/agent")), attest.ErrBadCertificate},
		{"ErrBadCertificate trust domain ID", w.ca.X509SVID(agentID, attesttest.URISANs("spiffe://example.org")), attest.ErrBadCertificate},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := w.v.VerifyX509(tt.svid.Certificates)
			if tt.want != nil {
				wantRefusal(t, err, tt.want)
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			leaf := tt.svid.Certificates[0]
			if id.ID != agentID || id.Method != attest.MethodX509 || !id.ExpiresAt.Equal(leaf.NotAfter) || id.Serial != leaf.SerialNumber.Text(16) {
				t.Fatalf("identity = %+v", id)
			}
		})
	}
}

func TestVerifier_VerifyX509_Federation(t *testing.T) {
	foreign := spiffeid.RequireFromPath(otherTD, "/agent/x")
	t.Run("listed trust domain accepted", func(t *testing.T) {
		w := newWorld(t, func(c *attest.Config) { c.TrustDomains = []spiffeid.TrustDomain{td, otherTD} })
		id, err := w.v.VerifyX509(w.other.X509SVID(foreign).Certificates)
		if err != nil || id.ID != foreign {
			t.Fatalf("VerifyX509 = %v, %v", id, err)
		}
		// Listing other.org must not let its CA speak for example.org.
		_, err = w.v.VerifyX509(w.other.X509SVID(agentID).Certificates)
		wantRefusal(t, err, attest.ErrUntrusted)
	})
	t.Run("ErrUnavailable listed but no bundle", func(t *testing.T) {
		w := newWorld(t, func(c *attest.Config) {
			c.TrustDomains = []spiffeid.TrustDomain{td, spiffeid.RequireTrustDomainFromString("third.org")}
		})
		third := attesttest.New(t, spiffeid.RequireTrustDomainFromString("third.org"))
		_, err := w.v.VerifyX509(third.X509SVID(spiffeid.RequireFromString("spiffe://third.org/a")).Certificates)
		wantRefusal(t, err, attest.ErrUnavailable)
	})
}

func TestVerifier_VerifyJWT(t *testing.T) {
	w := newWorld(t)
	now := w.now
	ca := w.ca
	tests := []struct {
		name  string
		token string
		want  *attest.Error
	}{
		{"valid", ca.JWTSVID(agentID, aud), nil},
		{"valid without jti", ca.JWTSVID(agentID, aud, attesttest.JTI("")), nil},
		{"ErrExpired", ca.JWTSVID(agentID, aud, attesttest.IssuedAt(now.Add(-3*time.Minute)), attesttest.Lifetime(2*time.Minute)), attest.ErrExpired},
		{"ErrExpired beyond skew, within go-spiffe leeway", ca.JWTSVID(agentID, aud, attesttest.IssuedAt(now.Add(-2*time.Minute)), attesttest.ExpiresAt(now.Add(-31*time.Second))), attest.ErrExpired},
		{"expired within skew", ca.JWTSVID(agentID, aud, attesttest.IssuedAt(now.Add(-2*time.Minute)), attesttest.ExpiresAt(now.Add(-29*time.Second))), nil},
		{"ErrNotYetValid nbf", ca.JWTSVID(agentID, aud, attesttest.NotBefore(now.Add(10*time.Minute)), attesttest.ExpiresAt(now.Add(4*time.Minute))), attest.ErrNotYetValid},
		{"ErrNotYetValid iat in the future", ca.JWTSVID(agentID, aud, attesttest.IssuedAt(now.Add(2*time.Minute)), attesttest.Lifetime(time.Minute)), attest.ErrNotYetValid},
		{"ErrLifetimeTooLong", ca.JWTSVID(agentID, aud, attesttest.Lifetime(time.Hour)), attest.ErrLifetimeTooLong},
		{"ErrForeignTrustDomain", w.other.JWTSVID(spiffeid.RequireFromPath(otherTD, "/agent/x"), aud), attest.ErrForeignTrustDomain},
		{"ErrWrongAudience", ca.JWTSVID(agentID, []string{"spiffe://example.org/vault"}), attest.ErrWrongAudience},
		{"ErrWrongAudience none", ca.JWTSVID(agentID, nil), attest.ErrWrongAudience},
		{"ErrWrongAudience prefix", ca.JWTSVID(agentID, []string{serverID.String() + "/x"}), attest.ErrWrongAudience},
		{"ErrSeveralAudiences", ca.JWTSVID(agentID, []string{serverID.String(), "spiffe://example.org/vault"}), attest.ErrSeveralAudiences},
		{"ErrBadAlgorithm alg none", ca.JWTSVID(agentID, aud, attesttest.AlgNone()), attest.ErrBadAlgorithm},
		{"ErrBadAlgorithm HS256", ca.JWTSVID(agentID, aud, attesttest.HS256([]byte("secret"))), attest.ErrBadAlgorithm},
		{"ErrBadAlgorithm EdDSA", ca.JWTSVID(agentID, aud, attesttest.Header("alg", "EdDSA")), attest.ErrBadAlgorithm},
		{"ErrUnknownKey", ca.JWTSVID(agentID, aud, attesttest.KeyID("not-in-bundle")), attest.ErrUnknownKey},
		{"ErrUntrusted other key, same kid", attesttest.New(t, td, attesttest.WithJWTKeyID(ca.JWTKeyID())).JWTSVID(agentID, aud), attest.ErrUntrusted},
		{"ErrUntrusted forged and expired", attesttest.New(t, td, attesttest.WithJWTKeyID(ca.JWTKeyID())).JWTSVID(agentID, aud, attesttest.IssuedAt(now.Add(-time.Hour)), attesttest.Lifetime(time.Minute)), attest.ErrUntrusted},
		{"ErrUntrusted other trust domain's key for our ID", w.other.JWTSVID(agentID, aud, attesttest.KeyID(ca.JWTKeyID())), attest.ErrUntrusted},
		{"ErrUnknownKey other trust domain's kid for our ID", w.other.JWTSVID(agentID, aud), attest.ErrUnknownKey},
		{"ErrBadToken no kid", ca.JWTSVID(agentID, aud, attesttest.Header("kid", nil)), attest.ErrBadToken},
		{"ErrBadToken no sub", ca.JWTSVID(agentID, aud, attesttest.Claim("sub", "")), attest.ErrBadToken},
		{"ErrBadToken sub not SPIFFE", ca.JWTSVID(agentID, aud, attesttest.Claim("sub", "report-bot")), attest.ErrBadToken},
		{"ErrBadToken no exp", ca.JWTSVID(agentID, aud, attesttest.Claim("exp", nil)), attest.ErrBadToken},
		{"ErrBadToken no iat", ca.JWTSVID(agentID, aud, attesttest.Claim("iat", nil)), attest.ErrBadToken},
		{"ErrBadToken typ", ca.JWTSVID(agentID, aud, attesttest.Header("typ", "at+jwt")), attest.ErrBadToken},
		{"ErrBadToken garbage", "not a token", attest.ErrBadToken},
		{"ErrBadToken empty", "", attest.ErrBadToken},
		{"ErrBadToken JWE shape", "a.b.c.d.e", attest.ErrBadToken},
		{"ErrBadToken huge", strings.Repeat("a", attest.MaxTokenSize+1), attest.ErrBadToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := w.v.VerifyJWT(tt.token)
			if tt.want != nil {
				wantRefusal(t, err, tt.want)
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if id.ID != agentID || id.Method != attest.MethodJWT || id.ExpiresAt.IsZero() {
				t.Fatalf("identity = %+v", id)
			}
		})
	}
}

func TestVerifier_VerifyJWT_Options(t *testing.T) {
	t.Run("several audiences when allowed", func(t *testing.T) {
		w := newWorld(t, func(c *attest.Config) { c.AllowSeveralAudiences = true })
		if _, err := w.v.VerifyJWT(w.ca.JWTSVID(agentID, []string{"spiffe://example.org/vault", serverID.String()})); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("ErrLifetimeTooLong with a shorter maximum", func(t *testing.T) {
		w := newWorld(t, func(c *attest.Config) { c.MaxJWTLifetime = time.Minute })
		_, err := w.v.VerifyJWT(w.ca.JWTSVID(agentID, aud, attesttest.Lifetime(2*time.Minute)))
		wantRefusal(t, err, attest.ErrLifetimeTooLong)
	})
	t.Run("ErrBadToken bearer disabled", func(t *testing.T) {
		w := newWorld(t, func(c *attest.Config) { c.JWTBundles = nil })
		_, err := w.v.VerifyJWT(w.ca.JWTSVID(agentID, aud))
		wantRefusal(t, err, attest.ErrBadToken)
	})
	t.Run("federated trust domain when listed", func(t *testing.T) {
		w := newWorld(t, func(c *attest.Config) { c.TrustDomains = []spiffeid.TrustDomain{td, otherTD} })
		foreign := spiffeid.RequireFromPath(otherTD, "/agent/x")
		id, err := w.v.VerifyJWT(w.other.JWTSVID(foreign, aud))
		if err != nil || id.ID != foreign {
			t.Fatalf("VerifyJWT = %v, %v", id, err)
		}
	})
}

func TestVerifier_VerifyJWT_Replay(t *testing.T) {
	w := newWorld(t, func(c *attest.Config) { c.ReplayCacheSize = 2 })
	token := w.ca.JWTSVID(agentID, aud)
	if _, err := w.v.VerifyJWT(token); err != nil {
		t.Fatal(err)
	}
	t.Run("ErrReplayed", func(t *testing.T) {
		_, err := w.v.VerifyJWT(token)
		wantRefusal(t, err, attest.ErrReplayed)
	})
	t.Run("ErrReplayed without jti", func(t *testing.T) {
		noJTI := w.ca.JWTSVID(agentID, aud, attesttest.JTI(""))
		if _, err := w.v.VerifyJWT(noJTI); err != nil {
			t.Fatal(err)
		}
		_, err := w.v.VerifyJWT(noJTI)
		wantRefusal(t, err, attest.ErrReplayed)
	})
	t.Run("ErrUnavailable when full", func(t *testing.T) {
		_, err := w.v.VerifyJWT(w.ca.JWTSVID(agentID, aud))
		wantRefusal(t, err, attest.ErrUnavailable)
	})
	t.Run("refused tokens are not remembered", func(t *testing.T) {
		w := newWorld(t, func(c *attest.Config) { c.ReplayCacheSize = 1 })
		bad := w.ca.JWTSVID(agentID, []string{"spiffe://example.org/vault"})
		for range 3 {
			_, err := w.v.VerifyJWT(bad)
			wantRefusal(t, err, attest.ErrWrongAudience)
		}
		if _, err := w.v.VerifyJWT(w.ca.JWTSVID(agentID, aud)); err != nil {
			t.Fatal(err)
		}
	})
}

// The cache forgets a token once it can no longer be accepted, so a full
// cache drains by itself.
func TestVerifier_VerifyJWT_ReplayCacheDrains(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	ca := attesttest.New(t, td, attesttest.WithClock(func() time.Time { return now }))
	verifierNow := now
	v, err := attest.NewVerifier(attest.Config{
		ID: serverID, X509Bundles: ca.X509Bundle(), JWTBundles: ca.JWTBundle(),
		ReplayCacheSize: 1, Now: func() time.Time { return verifierNow },
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.VerifyJWT(ca.JWTSVID(agentID, aud, attesttest.Lifetime(10*time.Second))); err != nil {
		t.Fatal(err)
	}
	_, err = v.VerifyJWT(ca.JWTSVID(agentID, aud))
	wantRefusal(t, err, attest.ErrUnavailable)
	verifierNow = now.Add(41 * time.Second) // 10 s lifetime + 30 s skew, and then some
	if _, err := v.VerifyJWT(ca.JWTSVID(agentID, aud)); err != nil {
		t.Fatalf("after the first token expired: %v", err)
	}
}

func TestVerifier_Identify(t *testing.T) {
	w := newWorld(t)
	svid := w.ca.X509SVID(agentID)
	token := w.ca.JWTSVID(agentID, aud)
	tests := []struct {
		name   string
		tls    *tls.ConnectionState
		auth   []string
		want   *attest.Error
		method attest.Method
	}{
		{"x509", tls13(svid.Certificates...), nil, nil, attest.MethodX509},
		{"jwt", tls13(), []string{"Bearer " + token}, nil, attest.MethodJWT},
		{"jwt lower-case scheme", tls13(), []string{"bearer " + token}, nil, attest.MethodJWT},
		{"ErrNoCredential", tls13(), nil, attest.ErrNoCredential, ""},
		{"ErrSeveralCredentials", tls13(svid.Certificates...), []string{"Bearer " + token}, attest.ErrSeveralCredentials, ""},
		{"ErrInsecureTransport plaintext", nil, []string{"Bearer " + token}, attest.ErrInsecureTransport, ""},
		{"ErrInsecureTransport TLS 1.2", &tls.ConnectionState{Version: tls.VersionTLS12, PeerCertificates: svid.Certificates}, nil, attest.ErrInsecureTransport, ""},
		{"ErrBadToken Basic", tls13(), []string{"Basic YWdlbnQ6cHc="}, attest.ErrBadToken, ""},
		{"ErrBadToken two headers", tls13(), []string{"Bearer " + token, "Bearer " + token}, attest.ErrBadToken, ""},
		{"ErrBadToken empty bearer", tls13(), []string{"Bearer "}, attest.ErrBadToken, ""},
		{"ErrExpired x509", tls13(w.ca.X509SVID(agentID, attesttest.Expired()).Certificates...), nil, attest.ErrExpired, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := w.v.Identify(request(tt.tls, tt.auth...))
			if tt.want != nil {
				wantRefusal(t, err, tt.want)
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if id.ID != agentID || id.Method != tt.method {
				t.Fatalf("identity = %+v", id)
			}
		})
	}
}

func TestNewVerifier_Invalid(t *testing.T) {
	b := x509bundle.New(td)
	tests := map[string]attest.Config{
		"no ID":         {X509Bundles: b},
		"no bundles":    {ID: serverID},
		"skew too big":  {ID: serverID, X509Bundles: b, ClockSkew: 2 * time.Minute},
		"negative skew": {ID: serverID, X509Bundles: b, ClockSkew: -time.Second},
		"negative life": {ID: serverID, X509Bundles: b, MaxJWTLifetime: -time.Second},
		"empty domain":  {ID: serverID, X509Bundles: b, TrustDomains: []spiffeid.TrustDomain{{}}},
	}
	for name, cfg := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := attest.NewVerifier(cfg); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestError_MessageIsSafeAndErrorIsForLogs(t *testing.T) {
	w := newWorld(t)
	forged := attesttest.New(t, td, attesttest.WithJWTKeyID(w.ca.JWTKeyID())).JWTSVID(agentID, aud)
	_, err := w.v.VerifyJWT(forged)
	var e *attest.Error
	if !errors.As(err, &e) {
		t.Fatalf("not an *attest.Error: %v", err)
	}
	if e.Err == nil || !strings.Contains(err.Error(), e.Err.Error()) {
		t.Fatalf("Error() should carry the cause for logs: %q", err.Error())
	}
	if strings.Contains(e.Message, e.Err.Error()) || strings.Contains(e.Message, agentID.String()) {
		t.Fatalf("Message leaks the cause or names the claimed ID of a forged token: %q", e.Message)
	}
	if attest.KindOf(err) != attest.KindUntrusted || attest.KindOf(errors.New("x")) != "" {
		t.Fatal("KindOf")
	}
}
