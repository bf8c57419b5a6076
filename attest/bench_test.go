package attest_test

import (
	"testing"

	"github.com/latchbroker/latch/attest"
)

// The benchmarks measure what a request to latch pays for attestation:
// Identify on a request whose TLS handshake is already done (the handshake
// is paid once per connection and is not included). The plain benchmarks
// present the same credential again, as every request on a connection and
// every reuse of a JWT-SVID does; the _Cold ones verify from scratch, as
// the first request with a new credential does. integration/attest runs
// both next to a Vault token-create call for comparison.

// BenchmarkVerifyX509 is an X.509-SVID client certificate signed by the
// trust domain's root, as SPIRE issues them, presented again.
func BenchmarkVerifyX509(b *testing.B) {
	w := newWorld(b)
	r := request(tls13(w.ca.X509SVID(agentID).Certificates...))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := w.v.Identify(r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyJWT is an ES256 JWT-SVID bearer token (SPIRE's default
// key type) presented again, without replay protection.
func BenchmarkVerifyJWT(b *testing.B) {
	w := newWorld(b)
	r := request(tls13(), "Bearer "+w.ca.JWTSVID(agentID, aud))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := w.v.Identify(r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyJWT_Replay adds the replay cache; each iteration needs a
// fresh token, so it is a cold verification every time (minting is
// excluded with the timer).
func BenchmarkVerifyJWT_Replay(b *testing.B) {
	w := newWorld(b, func(c *attest.Config) { c.ReplayCacheSize = 1 << 20 })
	tokens := make([]string, 0, 4096)
	for range cap(tokens) {
		tokens = append(tokens, "Bearer "+w.ca.JWTSVID(agentID, aud))
	}
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		if i == len(tokens) {
			b.StopTimer()
			for j := range tokens {
				tokens[j] = "Bearer " + w.ca.JWTSVID(agentID, aud)
			}
			i = 0
			b.StartTimer()
		}
		if _, err := w.v.Identify(request(tls13(), tokens[i])); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkVerifyX509_Cold is a certificate chain seen for the first time
// (or after a bundle change): the full verification, without the cache.
func BenchmarkVerifyX509_Cold(b *testing.B) {
	w := newWorld(b, func(c *attest.Config) { c.CacheSize = -1 })
	r := request(tls13(w.ca.X509SVID(agentID).Certificates...))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := w.v.Identify(r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyJWT_Cold is a token seen for the first time: the full
// verification through go-spiffe, without the cache.
func BenchmarkVerifyJWT_Cold(b *testing.B) {
	w := newWorld(b, func(c *attest.Config) { c.CacheSize = -1 })
	r := request(tls13(), "Bearer "+w.ca.JWTSVID(agentID, aud))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := w.v.Identify(r); err != nil {
			b.Fatal(err)
		}
	}
}
