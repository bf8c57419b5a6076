package checkpoint

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Checkpoint says that the audit chain held record Seq, with hash Hash, at
// Time. ID is the SPIFFE ID of the latch that signed it.
type Checkpoint struct {
	Seq  uint64    `json:"seq"`
	Hash string    `json:"hash"`
	Time time.Time `json:"time"`
	ID   string    `json:"spiffe_id"`
}

// MaxSize bounds what Verify parses: a checkpoint is a few kilobytes (its
// certificate chain); anything far larger is not one.
const MaxSize = 64 << 10

// algorithms are the JWS algorithms an X.509-SVID key can sign with.
var algorithms = []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.ES512, jose.RS256, jose.PS256, jose.EdDSA}

// Sign signs c with svid's key, its chain in the x5c header; c.ID is set
// to svid's ID.
func Sign(c Checkpoint, svid *x509svid.SVID) (string, error) {
	alg, err := algorithmFor(svid.PrivateKey.Public())
	if err != nil {
		return "", err
	}
	c.ID, c.Time = svid.ID.String(), c.Time.UTC()
	payload, err := json.Marshal(c)
	if err != nil {
		return "", fmt.Errorf("checkpoint: %w", err)
	}
	x5c := make([]string, len(svid.Certificates))
	for i, cert := range svid.Certificates {
		x5c[i] = base64.StdEncoding.EncodeToString(cert.Raw)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: svid.PrivateKey},
		(&jose.SignerOptions{}).WithType("latch-checkpoint+jws").WithHeader("x5c", x5c))
	if err != nil {
		return "", fmt.Errorf("checkpoint: %w", err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		return "", fmt.Errorf("checkpoint: sign: %w", err)
	}
	return jws.CompactSerialize()
}

func algorithmFor(pub any) (jose.SignatureAlgorithm, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return jose.ES256, nil
		case elliptic.P384():
			return jose.ES384, nil
		case elliptic.P521():
			return jose.ES512, nil
		}
	case *rsa.PublicKey:
		return jose.RS256, nil
	case ed25519.PublicKey:
		return jose.EdDSA, nil
	}
	return "", fmt.Errorf("checkpoint: cannot sign with a %T key", pub)
}

// Verify checks a signed checkpoint against the trust bundle of the
// trust domain it names, from bundles: the x5c chain must be an
// X.509-SVID of that trust domain at the checkpoint's time, the signature
// its leaf's, and the payload's spiffe_id the leaf's ID. It returns the
// checkpoint.
func Verify(signed string, bundles x509bundle.Source) (Checkpoint, error) {
	var c Checkpoint
	signed = strings.TrimSpace(signed)
	if len(signed) > MaxSize {
		return c, fmt.Errorf("checkpoint: %d bytes, more than a checkpoint holds (%d)", len(signed), MaxSize)
	}
	jws, err := jose.ParseSignedCompact(signed, algorithms)
	if err != nil {
		return c, fmt.Errorf("checkpoint: not a signed checkpoint: %w", err)
	}
	if len(jws.Signatures) != 1 {
		return c, errors.New("checkpoint: want exactly one signature")
	}
	// The time comes from the payload before its signature is checked,
	// only to pick the moment the chain must have been valid at; the
	// payload is then accepted only if that very payload verifies.
	claimed := jws.UnsafePayloadWithoutVerification()
	if err := decode(claimed, &c); err != nil {
		return c, err
	}
	id, err := spiffeid.FromString(c.ID)
	if err != nil {
		return c, fmt.Errorf("checkpoint: spiffe_id: %w", err)
	}
	bundle, err := bundles.GetX509BundleForTrustDomain(id.TrustDomain())
	if err != nil {
		return c, fmt.Errorf("checkpoint: no trust bundle for %s: %w", id.TrustDomain(), err)
	}
	chains, err := jws.Signatures[0].Protected.Certificates(x509.VerifyOptions{
		Roots: pool(bundle), CurrentTime: c.Time, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return c, fmt.Errorf("checkpoint: signer's certificate does not chain to the trust bundle of %s at %s: %w", bundle.TrustDomain(), c.Time.Format(time.RFC3339), err)
	}
	chain := chains[0]
	signer, _, err := x509svid.Verify(chain[:max(1, len(chain)-1)], bundle, x509svid.WithTime(c.Time))
	if err != nil {
		return c, fmt.Errorf("checkpoint: signer is not an X.509-SVID of %s: %w", bundle.TrustDomain(), err)
	}
	payload, err := jws.Verify(chain[0].PublicKey)
	if err != nil || !bytes.Equal(payload, claimed) {
		return c, errors.New("checkpoint: the signature does not verify (forged or edited)")
	}
	if signer != id {
		return c, fmt.Errorf("checkpoint: says it was signed by %s, but the key is %s's", id, signer)
	}
	return c, nil
}

func decode(payload []byte, c *Checkpoint) error {
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		return fmt.Errorf("checkpoint: payload: %w", err)
	}
	if c.Seq == 0 || len(c.Hash) != 64 || c.Time.IsZero() {
		return fmt.Errorf("checkpoint: payload lacks seq, a 64-digit hash or time")
	}
	return nil
}

func pool(b *x509bundle.Bundle) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range b.X509Authorities() {
		p.AddCert(c)
	}
	return p
}
