package attest

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/latchbroker/latch/attest"
	"github.com/latchbroker/latch/integration/stack"
)

// The goal: verifying a request costs at most 5% of one Vault
// token-create call on the same machine. Run the three together:
//
//	go test -run '^$' -bench . ./integration/attest/

// BenchmarkVaultTokenCreate is the yardstick: one token create (a child of
// the root token, default policy, 5 minute TTL) against the dev server.
func BenchmarkVaultTokenCreate(b *testing.B) {
	c, err := st.Vault.Client()
	if err != nil {
		b.Fatal(err)
	}
	ctx := b.Context()
	req := &vaultapi.TokenCreateRequest{Policies: []string{"default"}, TTL: "5m", Metadata: map[string]string{"latch": "bench"}}
	for b.Loop() {
		if _, err := c.Auth().Token().CreateWithContext(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

// verifierOnSPIREBundle is a Verifier trusting the SPIRE server's bundle,
// with (warm) or without (cold) its cache of verified credentials.
func verifierOnSPIREBundle(b *testing.B, cold bool) *attest.Verifier {
	b.Helper()
	bundle, err := st.SPIRE.Bundle(b.Context())
	if err != nil {
		b.Fatal(err)
	}
	cfg := attest.Config{ID: serverID, X509Bundles: bundle, JWTBundles: bundle}
	if cold {
		cfg.CacheSize = -1
	}
	v, err := attest.NewVerifier(cfg)
	if err != nil {
		b.Fatal(err)
	}
	return v
}

// BenchmarkVerifyX509_SPIRE identifies a request by an X.509-SVID the SPIRE
// server signed: warm is the same certificate again (every request on a
// connection), cold a verification from scratch (a new certificate).
func BenchmarkVerifyX509_SPIRE(b *testing.B) {
	minted, err := st.SPIRE.MintX509SVID(b.Context(), spiffeid.RequireFromPath(stack.TrustDomain, "/agent/bench"), time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	svid, err := x509svid.Parse(minted.CertPEM, minted.KeyPEM)
	if err != nil {
		b.Fatal(err)
	}
	r := httptest.NewRequest(http.MethodPost, "https://latch/v1/credentials", nil)
	r.TLS = &tls.ConnectionState{Version: tls.VersionTLS13, PeerCertificates: svid.Certificates}
	benchIdentify(b, r)
}

// BenchmarkVerifyJWT_SPIRE identifies a request by a JWT-SVID the SPIRE
// server signed (its default key type, ES256): warm is the same token
// again (clients reuse one until it nears expiry), cold a new token.
func BenchmarkVerifyJWT_SPIRE(b *testing.B) {
	tok, err := st.SPIRE.MintJWTSVID(b.Context(), spiffeid.RequireFromPath(stack.TrustDomain, "/agent/bench"), 5*time.Minute, serverID.String())
	if err != nil {
		b.Fatal(err)
	}
	r := httptest.NewRequest(http.MethodPost, "https://latch/v1/credentials", nil)
	r.TLS = &tls.ConnectionState{Version: tls.VersionTLS13}
	r.Header.Set("Authorization", "Bearer "+tok)
	benchIdentify(b, r)
}

func benchIdentify(b *testing.B, r *http.Request) {
	for _, mode := range []string{"warm", "cold"} {
		b.Run(mode, func(b *testing.B) {
			v := verifierOnSPIREBundle(b, mode == "cold")
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Identify(r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
