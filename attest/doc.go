// Package attest establishes who is calling: it verifies agents' and
// operators' SPIFFE identities (X.509-SVIDs over mutual TLS 1.3, JWT-SVIDs as
// bearer tokens) on the server side, and obtains the caller's own SVID on the
// client side, from the SPIFFE Workload API or from files.
//
// attest is a leaf: it imports go-spiffe, never broker.
//
// # Server
//
// latch's listener is TLS 1.3 only and presents latch's own X.509-SVID. It
// asks for a client certificate but does not require one, so that a caller
// may instead send Authorization: Bearer <JWT-SVID>. Every request is then
// identified by Verifier.Identify, which judges whichever credential came:
//
//	src, err := attest.OpenWorkloadAPI(ctx, attest.WorkloadAPIConfig{
//		Addr: "unix:///run/spire/agent.sock", // or "" for $SPIFFE_ENDPOINT_SOCKET
//		ID:   serverID,                        // pick latch's own SVID
//	})
//	// or: src, err := attest.OpenFiles(attest.FilesConfig{CertFile: …, KeyFile: …, BundleFile: …, JWTBundleFile: …})
//	defer src.Close()
//
//	v, err := attest.NewVerifier(attest.Config{
//		ID:           serverID,                       // server.id: the audience of JWT-SVIDs
//		TrustDomains: []spiffeid.TrustDomain{td},     // federation allow-list
//		X509Bundles:  src,
//		JWTBundles:   src,
//	})
//	tlsConfig, err := v.ServerTLSConfig(src)
//	srv := &http.Server{TLSConfig: tlsConfig, Handler: h}
//	go srv.ServeTLS(ln, "", "")
//
//	// in h:
//	id, err := v.Identify(r)
//	if err != nil {
//		var e *attest.Error
//		errors.As(err, &e) // e.Kind for the code, e.Message for the caller, err for the log
//		...             // 401 (503 for attest.KindUnavailable)
//	}
//	// id.ID is the caller's SPIFFE ID; id.Method, id.ExpiresAt, id.Serial/id.JTI for audit.
//
// Refusals are *Error values with a Kind (expired, not_yet_valid,
// foreign_trust_domain, wrong_audience, several_audiences, no_credential,
// bad_token, bad_algorithm, unknown_key, untrusted, replayed, …). Their
// Message is safe to send; their cause is for logs. Claims of a credential
// (its expiry, its audience) are only reported once its signature has
// verified, so a forged credential is never recorded as a failure of the
// workload it names.
//
// Beyond go-spiffe's checks the Verifier bounds a JWT-SVID's lifetime
// (exp − iat, default 5 minutes), refuses tokens with several audiences
// unless configured, applies one clock skew (default 30 s) to every
// validity time, and can refuse a second use of a token
// (Config.ReplayCacheSize). It remembers credentials that verified, so that the
// next request with the same certificate chain or token costs a map lookup
// instead of a signature check, for as long as the bundle and the clock
// allow.
//
// # Client
//
// Agents and the CLI call latch with an *http.Client that proves latch is
// server.id (by its X.509-SVID, not its host name) and identifies the caller
// with its X.509-SVID or with a JWT-SVID for audience server.id:
//
//	src, err := attest.OpenWorkloadAPI(ctx, attest.WorkloadAPIConfig{})
//	c, err := attest.NewHTTPClient(src, serverID, attest.MethodX509) // or attest.MethodJWT
//
// ClientTLSConfig and BearerTransport are the parts, for callers that build
// their own transport.
//
// # Sources
//
// A Source follows its origin without a restart: the Workload API pushes
// rotated SVIDs and new bundles; files are re-read when their content
// changes (a half-written set is ignored until it is consistent again).
// Tests use attesttest's in-process CA instead of either.
package attest
