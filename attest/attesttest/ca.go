package attesttest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/url"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// CA is a SPIFFE trust domain's authority: an X.509 CA (a root, or an
// intermediate under one) and a JWT signing key. It signs anything it is
// asked to, including SVIDs for other trust domains' IDs, which is what
// tests of "a chain to another trust domain" need.
type CA struct {
	tb     testing.TB
	td     spiffeid.TrustDomain
	now    func() time.Time
	cert   *x509.Certificate
	key    crypto.Signer
	chain  []*x509.Certificate // intermediates from cert up to, not including, the root
	root   *CA
	jwtKey *ecdsa.PrivateKey
	kid    string
}

// Option configures New.
type Option func(*CA)

// WithClock sets the CA's notion of now, from which the default validity
// of everything it mints is counted. Use the same clock as the code under
// test.
func WithClock(now func() time.Time) Option { return func(c *CA) { c.now = now } }

// WithJWTKeyID sets the kid of the CA's JWT key. Two CAs with the same kid
// and different keys make tokens that name a known kid but fail the
// signature check.
func WithJWTKeyID(kid string) Option { return func(c *CA) { c.kid = kid } }

// New returns a root CA for td with fresh ECDSA P-256 keys. Failures end
// the test.
func New(tb testing.TB, td spiffeid.TrustDomain, opts ...Option) *CA {
	tb.Helper()
	ca := &CA{tb: tb, td: td, now: time.Now}
	for _, o := range opts {
		o(ca)
	}
	ca.key = newKey(tb)
	ca.jwtKey = newKey(tb)
	if ca.kid == "" {
		ca.kid = randomHex(tb, 16)
	}
	now := ca.now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(tb),
		Subject:               pkix.Name{Organization: []string{"attesttest"}, CommonName: td.Name() + " root"},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             now.Add(-30 * 24 * time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	ca.cert = createCert(tb, tmpl, tmpl, ca.key.Public(), ca.key)
	ca.root = ca
	return ca
}

// Intermediate returns a CA signed by ca for the same trust domain. Its
// SVIDs carry it in their chain; the bundle stays the root's.
func (ca *CA) Intermediate() *CA {
	ca.tb.Helper()
	key := newKey(ca.tb)
	now := ca.now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(ca.tb),
		Subject:               pkix.Name{Organization: []string{"attesttest"}, CommonName: ca.td.Name() + " intermediate"},
		URIs:                  []*url.URL{ca.td.ID().URL()},
		NotBefore:             now.Add(-29 * 24 * time.Hour),
		NotAfter:              now.Add(364 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	cert := createCert(ca.tb, tmpl, ca.cert, key.Public(), ca.key)
	return &CA{
		tb: ca.tb, td: ca.td, now: ca.now,
		cert: cert, key: key,
		chain:  append([]*x509.Certificate{cert}, ca.chain...),
		root:   ca.root,
		jwtKey: ca.jwtKey, kid: ca.kid,
	}
}

// TrustDomain is the CA's trust domain.
func (ca *CA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Root is the root certificate (the X.509 bundle's only authority).
func (ca *CA) Root() *x509.Certificate { return ca.root.cert }

// JWTKeyID is the kid of the CA's JWT key.
func (ca *CA) JWTKeyID() string { return ca.kid }

// X509Bundle is the trust domain's X.509 bundle; it is also an
// x509bundle.Source.
func (ca *CA) X509Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.td, []*x509.Certificate{ca.root.cert})
}

// JWTBundle is the trust domain's JWT bundle; it is also a
// jwtbundle.Source.
func (ca *CA) JWTBundle() *jwtbundle.Bundle {
	return jwtbundle.FromJWTAuthorities(ca.td, map[string]crypto.PublicKey{ca.kid: ca.jwtKey.Public()})
}

// Bundle is the trust domain's SPIFFE bundle (both authorities).
func (ca *CA) Bundle() *spiffebundle.Bundle {
	b := spiffebundle.FromX509Authorities(ca.td, []*x509.Certificate{ca.root.cert})
	b.SetJWTAuthorities(map[string]crypto.PublicKey{ca.kid: ca.jwtKey.Public()})
	return b
}

// X509Option shapes one X.509-SVID.
type X509Option func(*x509.Certificate)

// Validity sets the certificate's validity period.
func Validity(notBefore, notAfter time.Time) X509Option {
	return func(c *x509.Certificate) { c.NotBefore, c.NotAfter = notBefore, notAfter }
}

// Expired makes a certificate that expired an hour before the CA's now.
func Expired() X509Option {
	return func(c *x509.Certificate) {
		c.NotAfter = c.NotBefore.Add(-time.Hour)
		c.NotBefore = c.NotAfter.Add(-time.Hour)
	}
}

// NotYetValid makes a certificate whose validity starts an hour after the
// CA's now.
func NotYetValid() X509Option {
	return func(c *x509.Certificate) {
		c.NotBefore = c.NotBefore.Add(time.Hour)
		c.NotAfter = c.NotBefore.Add(time.Hour)
	}
}

// LeafIsCA sets basic constraints CA=true on the leaf.
func LeafIsCA() X509Option {
	return func(c *x509.Certificate) { c.IsCA, c.BasicConstraintsValid = true, true }
}

// KeyCertSign gives the leaf the keyCertSign key usage.
func KeyCertSign() X509Option {
	return func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCertSign }
}

// NoURISAN leaves out the URI SAN that carries the SPIFFE ID.
func NoURISAN() X509Option { return func(c *x509.Certificate) { c.URIs = nil } }

// URISANs replaces the URI SANs, for example with two SPIFFE IDs.
func URISANs(uris ...string) X509Option {
	return func(c *x509.Certificate) {
		c.URIs = nil
		for _, u := range uris {
			parsed, err := url.Parse(u)
			if err != nil {
				panic("attesttest: URISANs: " + err.Error())
			}
			c.URIs = append(c.URIs, parsed)
		}
	}
}

// ModifyCert edits the certificate template before signing: anything the
// named options do not cover.
func ModifyCert(f func(*x509.Certificate)) X509Option { return f }

// X509SVID mints an X.509-SVID for id, valid from 10 s before the CA's now
// for an hour unless options say otherwise. The result is also an
// x509svid.Source. Bad shapes are returned as they are: go-spiffe's own
// constructors would refuse them, which is the point.
func (ca *CA) X509SVID(id spiffeid.ID, opts ...X509Option) *x509svid.SVID {
	ca.tb.Helper()
	key := newKey(ca.tb)
	now := ca.now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(ca.tb),
		URIs:                  []*url.URL{id.URL()},
		NotBefore:             now.Add(-10 * time.Second),
		NotAfter:              now.Add(time.Hour),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, o := range opts {
		o(tmpl)
	}
	leaf := createCert(ca.tb, tmpl, ca.cert, key.Public(), ca.key)
	return &x509svid.SVID{
		ID:           id,
		Certificates: append([]*x509.Certificate{leaf}, ca.chain...),
		PrivateKey:   key,
	}
}

// JWTOption shapes one JWT-SVID.
type JWTOption func(*jwtSpec)

type jwtSpec struct {
	header map[string]any
	claims map[string]any
	alg    string // ES256 (default), none, HS256
	secret []byte
}

// IssuedAt sets iat.
func IssuedAt(t time.Time) JWTOption { return func(s *jwtSpec) { s.claims["iat"] = t.Unix() } }

// ExpiresAt sets exp.
func ExpiresAt(t time.Time) JWTOption { return func(s *jwtSpec) { s.claims["exp"] = t.Unix() } }

// NotBefore sets nbf.
func NotBefore(t time.Time) JWTOption { return func(s *jwtSpec) { s.claims["nbf"] = t.Unix() } }

// Lifetime sets exp to iat + d.
func Lifetime(d time.Duration) JWTOption {
	return func(s *jwtSpec) { s.claims["exp"] = s.claims["iat"].(int64) + int64(d/time.Second) }
}

// JTI sets the jti claim; "" removes it.
func JTI(jti string) JWTOption { return Claim("jti", jti) }

// Claim sets any claim; a nil or "" value removes it.
func Claim(name string, value any) JWTOption {
	return func(s *jwtSpec) {
		if value == nil || value == "" {
			delete(s.claims, name)
			return
		}
		s.claims[name] = value
	}
}

// Header sets any header; a nil value removes it.
func Header(name string, value any) JWTOption {
	return func(s *jwtSpec) {
		if value == nil {
			delete(s.header, name)
			return
		}
		s.header[name] = value
	}
}

// KeyID sets the kid header without changing the signing key, for example
// to one no bundle has.
func KeyID(kid string) JWTOption { return Header("kid", kid) }

// AlgNone makes an unsigned token (alg "none", empty signature).
func AlgNone() JWTOption { return func(s *jwtSpec) { s.alg = "none" } }

// HS256 MACs the token with secret instead of signing it, as an attacker
// who knows a public key might try.
func HS256(secret []byte) JWTOption {
	return func(s *jwtSpec) { s.alg, s.secret = "HS256", secret }
}

// JWTSVID mints a JWT-SVID for id and audience, signed ES256 with the CA's
// JWT key: iat is the CA's now, exp two minutes later, with a random jti,
// unless options say otherwise. One audience is encoded as a string,
// several as an array, as SPIRE does.
func (ca *CA) JWTSVID(id spiffeid.ID, audience []string, opts ...JWTOption) string {
	ca.tb.Helper()
	now := ca.now()
	s := &jwtSpec{
		header: map[string]any{"typ": "JWT", "kid": ca.kid},
		claims: map[string]any{
			"sub": id.String(),
			"iat": now.Unix(),
			"exp": now.Add(2 * time.Minute).Unix(),
			"jti": randomHex(ca.tb, 16),
		},
		alg: "ES256",
	}
	switch len(audience) {
	case 0:
	case 1:
		s.claims["aud"] = audience[0]
	default:
		s.claims["aud"] = slices.Clone(audience)
	}
	for _, o := range opts {
		o(s)
	}
	if _, set := s.header["alg"]; !set {
		s.header["alg"] = s.alg // Header("alg", …) may lie about it
	}
	h, err := json.Marshal(s.header)
	if err != nil {
		ca.tb.Fatalf("attesttest: JWT header: %v", err)
	}
	c, err := json.Marshal(s.claims)
	if err != nil {
		ca.tb.Fatalf("attesttest: JWT claims: %v", err)
	}
	signed := b64(h) + "." + b64(c)
	var sig []byte
	switch s.alg {
	case "none":
	case "HS256":
		m := hmac.New(sha256.New, s.secret)
		m.Write([]byte(signed))
		sig = m.Sum(nil)
	case "ES256":
		digest := sha256.Sum256([]byte(signed))
		r, ss, err := ecdsa.Sign(rand.Reader, ca.jwtKey, digest[:])
		if err != nil {
			ca.tb.Fatalf("attesttest: sign JWT: %v", err)
		}
		sig = make([]byte, 64)
		r.FillBytes(sig[:32])
		ss.FillBytes(sig[32:])
	}
	return signed + "." + b64(sig)
}

// JWTSource is a jwtsvid.Source that mints a fresh JWT-SVID for id on each
// fetch, for client-side tests.
func (ca *CA) JWTSource(id spiffeid.ID, opts ...JWTOption) jwtsvid.Source {
	return jwtSource{ca: ca, id: id, opts: opts}
}

type jwtSource struct {
	ca   *CA
	id   spiffeid.ID
	opts []JWTOption
}

func (s jwtSource) FetchJWTSVID(_ context.Context, p jwtsvid.Params) (*jwtsvid.SVID, error) {
	aud := append([]string{p.Audience}, p.ExtraAudiences...)
	token := s.ca.JWTSVID(s.id, aud, s.opts...)
	return jwtsvid.ParseInsecure(token, aud)
}

// WriteSVID writes svid's certificate chain and PKCS#8 key as PEM files.
func WriteSVID(tb testing.TB, svid *x509svid.SVID, certPath, keyPath string) {
	tb.Helper()
	var certs []byte
	for _, c := range svid.Certificates {
		certs = append(certs, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	der, err := x509.MarshalPKCS8PrivateKey(svid.PrivateKey)
	if err != nil {
		tb.Fatalf("attesttest: marshal key: %v", err)
	}
	writeFile(tb, certPath, certs)
	writeFile(tb, keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

// WriteBundle writes the X.509 bundle as PEM.
func (ca *CA) WriteBundle(path string) {
	ca.tb.Helper()
	b, err := ca.X509Bundle().Marshal()
	if err != nil {
		ca.tb.Fatalf("attesttest: marshal bundle: %v", err)
	}
	writeFile(ca.tb, path, b)
}

// WriteJWTBundle writes the SPIFFE bundle (JSON, both authorities), which is
// what SPIRE's `bundle show -format spiffe` prints.
func (ca *CA) WriteJWTBundle(path string) {
	ca.tb.Helper()
	b, err := ca.Bundle().Marshal()
	if err != nil {
		ca.tb.Fatalf("attesttest: marshal SPIFFE bundle: %v", err)
	}
	writeFile(ca.tb, path, b)
}

// writeFile replaces path atomically, as a careful deployment tool would,
// so a concurrent reader sees the old or the new file, never half of one.
func writeFile(tb testing.TB, path string, b []byte) {
	tb.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		tb.Fatalf("attesttest: %v", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		tb.Fatalf("attesttest: %v", err)
	}
}

func newKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatalf("attesttest: generate key: %v", err)
	}
	return k
}

func serial(tb testing.TB) *big.Int {
	tb.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		tb.Fatalf("attesttest: serial: %v", err)
	}
	return n.Add(n, big.NewInt(1))
}

func randomHex(tb testing.TB, n int) string {
	tb.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		tb.Fatalf("attesttest: random: %v", err)
	}
	return hex.EncodeToString(b)
}

func createCert(tb testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) *x509.Certificate {
	tb.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		tb.Fatalf("attesttest: create certificate: %v", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatalf("attesttest: parse certificate: %v", err)
	}
	return c
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
