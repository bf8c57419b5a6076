package attest_test

import (
	"crypto"
	"crypto/x509"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"

	"github.com/latchbroker/latch/attest"
	"github.com/latchbroker/latch/attest/attesttest"
)

// A remembered credential is only as good as the bundle and the clock say
// now: each of these changes must turn an accepted credential into a
// refused one on its next presentation.
func TestVerifier_CacheFollowsBundleAndClock(t *testing.T) {
	newVerifier := func(t *testing.T, x509s x509bundle.Source, jwts jwtbundle.Source, now *time.Time) *attest.Verifier {
		t.Helper()
		v, err := attest.NewVerifier(attest.Config{ID: serverID, X509Bundles: x509s, JWTBundles: jwts, Now: func() time.Time { return *now }})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	start := time.Now().Truncate(time.Second)

	t.Run("ErrUntrusted X.509 after the bundle is replaced", func(t *testing.T) {
		now := start
		ca := attesttest.New(t, td)
		set := x509bundle.NewSet(ca.X509Bundle())
		v := newVerifier(t, set, nil, &now)
		chain := ca.X509SVID(agentID).Certificates
		if _, err := v.VerifyX509(chain); err != nil {
			t.Fatal(err)
		}
		set.Add(attesttest.New(t, td).X509Bundle())
		_, err := v.VerifyX509(chain)
		wantRefusal(t, err, attest.ErrUntrusted)
	})
	t.Run("ErrUntrusted X.509 after the authority is removed in place", func(t *testing.T) {
		now := start
		ca := attesttest.New(t, td)
		b := ca.X509Bundle()
		v := newVerifier(t, b, nil, &now)
		chain := ca.X509SVID(agentID).Certificates
		if _, err := v.VerifyX509(chain); err != nil {
			t.Fatal(err)
		}
		b.RemoveX509Authority(ca.Root())
		_, err := v.VerifyX509(chain)
		wantRefusal(t, err, attest.ErrUntrusted)
	})
	t.Run("ErrExpired X.509 once the clock passes NotAfter", func(t *testing.T) {
		now := start
		ca := attesttest.New(t, td, attesttest.WithClock(func() time.Time { return start }))
		v := newVerifier(t, ca.X509Bundle(), nil, &now)
		chain := ca.X509SVID(agentID, attesttest.Validity(start.Add(-time.Minute), start.Add(time.Minute))).Certificates
		if _, err := v.VerifyX509(chain); err != nil {
			t.Fatal(err)
		}
		now = start.Add(time.Minute + 20*time.Second) // within skew: still accepted
		if _, err := v.VerifyX509(chain); err != nil {
			t.Fatalf("within the skew: %v", err)
		}
		now = start.Add(2 * time.Minute)
		_, err := v.VerifyX509(chain)
		wantRefusal(t, err, attest.ErrExpired)
	})
	t.Run("ErrUnknownKey JWT after its key is removed", func(t *testing.T) {
		now := start
		ca := attesttest.New(t, td)
		b := ca.JWTBundle()
		v := newVerifier(t, ca.X509Bundle(), b, &now)
		tok := ca.JWTSVID(agentID, aud)
		if _, err := v.VerifyJWT(tok); err != nil {
			t.Fatal(err)
		}
		b.RemoveJWTAuthority(ca.JWTKeyID())
		_, err := v.VerifyJWT(tok)
		wantRefusal(t, err, attest.ErrUnknownKey)
	})
	t.Run("ErrUntrusted JWT after its kid is bound to another key", func(t *testing.T) {
		now := start
		ca := attesttest.New(t, td)
		b := ca.JWTBundle()
		v := newVerifier(t, ca.X509Bundle(), b, &now)
		tok := ca.JWTSVID(agentID, aud)
		if _, err := v.VerifyJWT(tok); err != nil {
			t.Fatal(err)
		}
		other := attesttest.New(t, td).JWTBundle()
		for _, k := range other.JWTAuthorities() {
			b.SetJWTAuthorities(map[string]crypto.PublicKey{ca.JWTKeyID(): k})
		}
		_, err := v.VerifyJWT(tok)
		wantRefusal(t, err, attest.ErrUntrusted)
	})
	t.Run("ErrExpired JWT once the clock passes exp", func(t *testing.T) {
		now := start
		ca := attesttest.New(t, td, attesttest.WithClock(func() time.Time { return start }))
		v := newVerifier(t, ca.X509Bundle(), ca.JWTBundle(), &now)
		tok := ca.JWTSVID(agentID, aud, attesttest.Lifetime(time.Minute))
		if _, err := v.VerifyJWT(tok); err != nil {
			t.Fatal(err)
		}
		now = start.Add(2 * time.Minute)
		_, err := v.VerifyJWT(tok)
		wantRefusal(t, err, attest.ErrExpired)
	})
}

// Many requests at once, remembered and not, with eviction from a small
// cache; run with -race.
func TestVerifier_Concurrent(t *testing.T) {
	w := newWorld(t, func(c *attest.Config) { c.CacheSize = 4 })
	const n = 8
	tokens := make([]string, n)
	chains := make([][]*x509.Certificate, n)
	for i := range n {
		tokens[i] = w.ca.JWTSVID(agentID, aud)
		chains[i] = w.ca.X509SVID(agentID).Certificates
	}
	var wg sync.WaitGroup
	for g := range n {
		wg.Go(func() {
			for i := range 40 {
				if _, err := w.v.VerifyJWT(tokens[(g+i)%n]); err != nil {
					t.Error(err)
					return
				}
				if _, err := w.v.VerifyX509(chains[(g+i)%n]); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}
