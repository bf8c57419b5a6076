package attest

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Defaults and limits of Config.
const (
	// DefaultMaxJWTLifetime bounds exp − iat of a JWT-SVID: a bearer token
	// that leaks is only useful until it expires, so latch refuses long-lived
	// ones even when the issuer minted them.
	DefaultMaxJWTLifetime = 5 * time.Minute
	// DefaultClockSkew is how far latch's clock may disagree with the
	// issuer's and the caller's.
	DefaultClockSkew = 30 * time.Second
	// MaxClockSkew is the largest ClockSkew accepted. go-spiffe's JWT-SVID
	// validation allows go-jose's one minute of leeway and no more, so a
	// larger skew could never take effect for bearer tokens.
	MaxClockSkew = time.Minute
	// MaxTokenSize bounds a bearer token before any parsing. Real JWT-SVIDs
	// are well under 2 KiB.
	MaxTokenSize = 8 << 10
	// maxChainLength bounds the client certificate chain latch will try to
	// verify; SPIRE chains are one to three certificates long.
	maxChainLength = 8
)

// Config configures a Verifier.
type Config struct {
	// ID is latch's own SPIFFE ID (server.id). JWT-SVIDs must name it in
	// their audience, and the server's X.509-SVID must carry it.
	ID spiffeid.ID
	// TrustDomains are the only trust domains whose SVIDs are accepted.
	// Empty means ID's trust domain alone. A federated bundle delivered by
	// the Workload API grants nothing unless its trust domain is listed.
	TrustDomains []spiffeid.TrustDomain
	// X509Bundles verifies client certificates. Required.
	X509Bundles x509bundle.Source
	// JWTBundles verifies bearer tokens; nil refuses every bearer token.
	JWTBundles jwtbundle.Source
	// MaxJWTLifetime is the longest exp − iat accepted (0: 5 minutes).
	MaxJWTLifetime time.Duration
	// ClockSkew is the tolerance on every validity time (0: 30 s; at most
	// MaxClockSkew).
	ClockSkew time.Duration
	// AllowSeveralAudiences accepts JWT-SVIDs that name other audiences
	// besides ID. Off by default: any other audience could replay the token
	// to latch.
	AllowSeveralAudiences bool
	// ReplayCacheSize turns on replay protection for JWT-SVIDs when > 0: up
	// to that many tokens are remembered until they expire and a second use
	// is refused. Each request then needs a fresh token.
	ReplayCacheSize int
	// CacheSize is how many verified certificate chains, and how many
	// verified tokens, are remembered so that presenting the same
	// credential again skips the signature check while the bundle is
	// unchanged (0: DefaultCacheSize; negative: no cache).
	CacheSize int
	// Now is the clock (nil: time.Now).
	Now func() time.Time
}

// Verifier identifies callers by their SVIDs. It is safe for concurrent use.
type Verifier struct {
	id          spiffeid.ID
	idString    string
	domains     []spiffeid.TrustDomain
	x509        x509bundle.Source
	jwt         jwtbundle.Source
	maxLifetime time.Duration
	skew        time.Duration
	severalAud  bool
	replay      *replayCache
	chains      *verifiedCache[verifiedChain]
	tokens      *verifiedCache[verifiedToken]
	now         func() time.Time
}

// NewVerifier checks cfg and returns a Verifier.
func NewVerifier(cfg Config) (*Verifier, error) {
	switch {
	case cfg.ID.IsZero():
		return nil, errors.New("attest: verifier: server ID is required")
	case cfg.X509Bundles == nil:
		return nil, errors.New("attest: verifier: an X.509 bundle source is required")
	case cfg.MaxJWTLifetime < 0:
		return nil, fmt.Errorf("attest: verifier: max JWT lifetime %s is negative", cfg.MaxJWTLifetime)
	case cfg.ClockSkew < 0 || cfg.ClockSkew > MaxClockSkew:
		return nil, fmt.Errorf("attest: verifier: clock skew %s is outside 0..%s", cfg.ClockSkew, MaxClockSkew)
	case cfg.ReplayCacheSize < 0:
		return nil, fmt.Errorf("attest: verifier: replay cache size %d is negative", cfg.ReplayCacheSize)
	}
	v := &Verifier{
		id:          cfg.ID,
		idString:    cfg.ID.String(),
		x509:        cfg.X509Bundles,
		jwt:         cfg.JWTBundles,
		maxLifetime: orDefault(cfg.MaxJWTLifetime, DefaultMaxJWTLifetime),
		skew:        orDefault(cfg.ClockSkew, DefaultClockSkew),
		severalAud:  cfg.AllowSeveralAudiences,
		now:         cfg.Now,
	}
	for _, td := range cfg.TrustDomains {
		if td.IsZero() {
			return nil, errors.New("attest: verifier: empty trust domain in the accepted list")
		}
		if !slices.Contains(v.domains, td) {
			v.domains = append(v.domains, td)
		}
	}
	if len(v.domains) == 0 {
		v.domains = []spiffeid.TrustDomain{cfg.ID.TrustDomain()}
	}
	if v.now == nil {
		v.now = time.Now
	}
	if cfg.ReplayCacheSize > 0 {
		v.replay = newReplayCache(cfg.ReplayCacheSize)
	}
	size := cfg.CacheSize
	if size == 0 {
		size = DefaultCacheSize
	}
	v.chains = newVerifiedCache[verifiedChain](size)
	v.tokens = newVerifiedCache[verifiedToken](size)
	return v, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// ID is the server's SPIFFE ID.
func (v *Verifier) ID() spiffeid.ID { return v.id }

func (v *Verifier) accepts(td spiffeid.TrustDomain) bool {
	return slices.Contains(v.domains, td)
}

// ServerTLSConfig returns the tls.Config for latch's listener: TLS 1.3
// only, presenting the X.509-SVID that svid currently holds (so rotations
// apply to new connections without a restart), and asking for — not
// requiring — a client certificate.
//
// The handshake does not judge the client certificate: Identify does, on
// every request (a cache lookup once the chain has verified). That way a caller with no certificate can still use a
// bearer token, and a caller with a bad one gets a 401 naming the reason
// (and the broker records a violation) instead of an opaque TLS alert. The
// handshake still proves the client holds the certificate's private key.
//
// It fails when svid has no SVID or one for another ID than the server's,
// so a misconfiguration surfaces at start rather than in every client.
func (v *Verifier) ServerTLSConfig(svid x509svid.Source) (*tls.Config, error) {
	if _, err := v.serverCertificate(svid); err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequestClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return v.serverCertificate(svid)
		},
	}, nil
}

func (v *Verifier) serverCertificate(src x509svid.Source) (*tls.Certificate, error) {
	s, err := src.GetX509SVID()
	if err != nil {
		return nil, fmt.Errorf("attest: server X.509-SVID: %w", err)
	}
	if len(s.Certificates) == 0 {
		return nil, errors.New("attest: server X.509-SVID has no certificate")
	}
	if s.ID != v.id {
		return nil, fmt.Errorf("attest: server X.509-SVID is for %s but the server ID is %s: register latch under its server ID", s.ID, v.id)
	}
	cert := &tls.Certificate{PrivateKey: s.PrivateKey, Leaf: s.Certificates[0]}
	for _, c := range s.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return cert, nil
}

// Identify returns who made r: the X.509-SVID client certificate of its TLS
// connection, or else the JWT-SVID in its Authorization: Bearer header.
// It returns an *Error (match with errors.Is against the Err* sentinels):
// KindInsecureTransport without TLS 1.3, KindNoCredential without either
// credential, KindSeveralCredentials with both, and the kinds of VerifyX509
// and VerifyJWT.
func (v *Verifier) Identify(r *http.Request) (Identity, error) {
	if r.TLS == nil {
		return Identity{}, refuse(KindInsecureTransport, nil, "plaintext HTTP refused: connect with TLS 1.3")
	}
	if r.TLS.Version < tls.VersionTLS13 {
		return Identity{}, refuse(KindInsecureTransport, nil, "%s refused: connect with TLS 1.3", tls.VersionName(r.TLS.Version))
	}
	auth := r.Header.Values("Authorization")
	certs := r.TLS.PeerCertificates
	switch {
	case len(certs) > 0 && len(auth) > 0:
		return Identity{}, refuse(KindSeveralCredentials, nil, "%s", ErrSeveralCredentials.Message)
	case len(certs) > 0:
		return v.VerifyX509(certs)
	case len(auth) == 0:
		return Identity{}, refuse(KindNoCredential, nil, "%s", ErrNoCredential.Message)
	case len(auth) > 1:
		return Identity{}, refuse(KindBadToken, nil, "several Authorization headers: send one")
	}
	scheme, token, _ := strings.Cut(auth[0], " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return Identity{}, refuse(KindBadToken, nil, "Authorization scheme must be Bearer")
	}
	return v.VerifyJWT(strings.TrimLeft(token, " "))
}

// VerifyX509 verifies a client certificate chain, leaf first, as presented
// in a TLS handshake (the handshake has already proven possession of the
// leaf's key). It returns an *Error of kind KindNoCredential,
// KindBadCertificate, KindForeignTrustDomain, KindUnavailable, KindUntrusted,
// KindExpired or KindNotYetValid.
func (v *Verifier) VerifyX509(chain []*x509.Certificate) (Identity, error) {
	if len(chain) == 0 {
		return Identity{}, refuse(KindNoCredential, nil, "%s", ErrNoCredential.Message)
	}
	if len(chain) > maxChainLength {
		return Identity{}, refuse(KindBadCertificate, nil, "client certificate chain has %d certificates, more than %d", len(chain), maxChainLength)
	}
	now := v.now()
	key := chainKey(chain)
	if e, ok := v.chains.get(key); ok {
		if b, err := v.x509.GetX509BundleForTrustDomain(e.id.TrustDomain()); err == nil &&
			sameAuthorities(b.X509Authorities(), e.authorities) &&
			!now.Before(e.notBefore) && !now.After(e.notAfter) {
			return Identity{ID: e.id, Method: MethodX509, ExpiresAt: e.leafExpiry, Serial: e.serial}, nil
		}
		// The bundle changed or the chain is at the edge of its validity:
		// judge it afresh.
		v.chains.drop(key)
	}

	leaf := chain[0]
	id, err := leafID(leaf)
	if err != nil {
		return Identity{}, err
	}
	td := id.TrustDomain()
	if !v.accepts(td) {
		return Identity{}, refuse(KindForeignTrustDomain, nil, "trust domain %q is not accepted by this server", td.Name())
	}
	// Verify against this one bundle snapshot, so what is cached is
	// exactly what was verified.
	bundle, err := v.x509.GetX509BundleForTrustDomain(td)
	if err != nil {
		return Identity{}, refuse(KindUnavailable, err, "no X.509 trust bundle for trust domain %q yet, retry later", td.Name())
	}
	authorities := bundle.X509Authorities()
	identity := Identity{
		ID:        id,
		Method:    MethodX509,
		ExpiresAt: leaf.NotAfter,
		Serial:    leaf.SerialNumber.Text(16),
	}

	// Verify at the current time first: that is the common case and costs
	// one chain verification. Only when it fails do we find out whether
	// the chain is good but out of date, which decides between "expired"
	// and "untrusted" without ever blaming a forged certificate on the ID
	// it claims.
	_, chains, err := x509svid.Verify(chain, bundle, x509svid.WithTime(now))
	if err == nil {
		notBefore, notAfter := window(chains[0])
		v.chains.put(key, verifiedChain{
			id: id, serial: identity.Serial, leafExpiry: leaf.NotAfter,
			notBefore: notBefore, notAfter: notAfter, authorities: authorities,
		})
		return identity, nil
	}
	at := now
	switch {
	case now.Before(leaf.NotBefore):
		at = leaf.NotBefore
	case now.After(leaf.NotAfter):
		at = leaf.NotAfter
	}
	if at.Equal(now) {
		return Identity{}, refuse(KindUntrusted, err, "client certificate does not chain to an authority of trust domain %q", td.Name())
	}
	if _, _, err2 := x509svid.Verify(chain, bundle, x509svid.WithTime(at)); err2 != nil {
		return Identity{}, refuse(KindUntrusted, err2, "client certificate does not chain to an authority of trust domain %q", td.Name())
	}
	switch {
	case now.Before(leaf.NotBefore) && leaf.NotBefore.Sub(now) > v.skew:
		return Identity{}, refuse(KindNotYetValid, err, "X.509-SVID not valid before %s", leaf.NotBefore.UTC().Format(time.RFC3339))
	case now.After(leaf.NotAfter) && now.Sub(leaf.NotAfter) > v.skew:
		return Identity{}, refuse(KindExpired, err, "X.509-SVID expired at %s: fetch a fresh one", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	// Within the clock skew: the chain verified at its edge. Not cached;
	// the next request is judged again.
	return identity, nil
}

// leafID checks the shape of an X.509-SVID leaf and returns its SPIFFE ID.
// go-spiffe checks the same, but its errors are strings; these are kinds.
func leafID(leaf *x509.Certificate) (spiffeid.ID, error) {
	switch {
	case len(leaf.URIs) == 0:
		return spiffeid.ID{}, refuse(KindBadCertificate, nil, "client certificate has no URI SAN: an X.509-SVID carries its SPIFFE ID there")
	case len(leaf.URIs) > 1:
		return spiffeid.ID{}, refuse(KindBadCertificate, nil, "client certificate has %d URI SANs: an X.509-SVID has exactly one", len(leaf.URIs))
	case leaf.IsCA:
		return spiffeid.ID{}, refuse(KindBadCertificate, nil, "client certificate is a CA certificate (CA=true), not an X.509-SVID leaf")
	case leaf.KeyUsage&x509.KeyUsageCertSign != 0:
		return spiffeid.ID{}, refuse(KindBadCertificate, nil, "client certificate has the keyCertSign key usage, which an X.509-SVID leaf must not have")
	case leaf.KeyUsage&x509.KeyUsageCRLSign != 0:
		return spiffeid.ID{}, refuse(KindBadCertificate, nil, "client certificate has the cRLSign key usage, which an X.509-SVID leaf must not have")
	}
	id, err := spiffeid.FromURI(leaf.URIs[0])
	if err != nil {
		return spiffeid.ID{}, refuse(KindBadCertificate, err, "client certificate URI SAN is not a SPIFFE ID")
	}
	if id.Path() == "" {
		return spiffeid.ID{}, refuse(KindBadCertificate, nil, "client certificate SPIFFE ID %s names a trust domain, not a workload", id)
	}
	return id, nil
}
