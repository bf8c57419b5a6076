package attest_test

import (
	"errors"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"

	"github.com/latchbroker/latch/attest"
	"github.com/latchbroker/latch/attest/attesttest"
)

// fuzzKID is the key ID of the fuzz CA, so that the static seeds under
// testdata/fuzz/FuzzBearer (minted with another key under the same kid)
// reach signature verification instead of stopping at an unknown kid.
const fuzzKID = "fuzz"

// FuzzBearer feeds arbitrary Authorization header values through Identify:
// the header parsing, the JWS and JSON parsing, the claim checks and the
// signature verification. It must never panic, every refusal must be an
// *attest.Error with a kind and a short message, and anything accepted
// must be a token the test CA really signed.
func FuzzBearer(f *testing.F) {
	ca := attesttest.New(f, td, attesttest.WithJWTKeyID(fuzzKID))
	other := attesttest.New(f, otherTD)
	v, err := attest.NewVerifier(attest.Config{
		ID:              serverID,
		X509Bundles:     ca.X509Bundle(),
		JWTBundles:      jwtbundle.NewSet(ca.JWTBundle(), other.JWTBundle()),
		ReplayCacheSize: 1 << 16,
	})
	if err != nil {
		f.Fatal(err)
	}
	// Seeds minted now, so the fuzzer starts from tokens that verify and
	// from each way of being refused.
	now := time.Now()
	for _, tok := range []string{
		ca.JWTSVID(agentID, aud),
		ca.JWTSVID(agentID, aud, attesttest.JTI("")),
		ca.JWTSVID(agentID, []string{serverID.String(), "spiffe://example.org/vault"}),
		ca.JWTSVID(agentID, aud, attesttest.IssuedAt(now.Add(-time.Hour)), attesttest.Lifetime(time.Minute)),
		ca.JWTSVID(agentID, aud, attesttest.AlgNone()),
		ca.JWTSVID(agentID, aud, attesttest.HS256([]byte("k"))),
		ca.JWTSVID(agentID, aud, attesttest.KeyID("other")),
		ca.JWTSVID(agentID, aud, attesttest.Claim("aud", []any{1, 2})),
		ca.JWTSVID(agentID, aud, attesttest.Claim("exp", 1e300)),
		other.JWTSVID(agentID, aud),
	} {
		f.Add("Bearer " + tok)
	}
	f.Fuzz(func(t *testing.T, header string) {
		id, err := v.Identify(request(tls13(), header))
		if err == nil {
			if id.ID != agentID || id.Method != attest.MethodJWT || !id.ExpiresAt.After(time.Now().Add(-attest.DefaultClockSkew)) {
				t.Fatalf("accepted %q as %+v", header, id)
			}
			return
		}
		var e *attest.Error
		if !errors.As(err, &e) || e.Kind == "" || e.Message == "" {
			t.Fatalf("refusal of %q is not a typed attest.Error: %v", header, err)
		}
		if len(e.Message) > 300 {
			t.Fatalf("message echoes too much of the input (%d bytes): %q", len(e.Message), e.Message)
		}
	})
}
