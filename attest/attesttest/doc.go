// Package attesttest is an in-process SPIFFE certificate authority for unit
// tests: it mints X.509-SVIDs and JWT-SVIDs for any SPIFFE ID, good ones
// and every kind of bad one latch must refuse — expired, not yet valid,
// from another trust domain or another key, badly shaped certificates,
// unsigned or MAC'd tokens, unknown key IDs — so tests of every package can
// exercise attestation without a SPIRE server.
//
//	td := spiffeid.RequireTrustDomainFromString("example.org")
//	ca := attesttest.New(t, td)
//	agent := spiffeid.RequireFromPath(td, "/agent/report-bot")
//
//	svid := ca.X509SVID(agent)                              // *x509svid.SVID, also an x509svid.Source
//	expired := ca.X509SVID(agent, attesttest.Expired())
//	token := ca.JWTSVID(agent, []string{"spiffe://example.org/latch"})
//	none := ca.JWTSVID(agent, aud, attesttest.AlgNone())
//
//	// Trust: ca.X509Bundle(), ca.JWTBundle() (go-spiffe bundle sources),
//	// or files for code that reads them: ca.WriteBundle, ca.WriteJWTBundle,
//	// attesttest.WriteSVID.
//
// It depends on go-spiffe and go-jose only, never on latch's packages, so
// any package's tests may use it.
package attesttest
