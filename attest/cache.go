package attest

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultCacheSize is how many verified credentials of each kind a
// Verifier remembers (Config.CacheSize).
const DefaultCacheSize = 4096

// A credential is presented many times: every request on a mutual TLS
// connection carries the same certificate chain, and clients reuse a
// JWT-SVID until it nears expiry (the SPIRE agent caches them). Verifying
// the signature again each time costs a public-key operation — more than a
// tenth of a Vault token-create call — for an answer that cannot have
// changed while the trust bundle has not. So a Verifier remembers
// credentials that verified, and on the next presentation checks only what
// can change: the bundle (the same authorities, the same JWT key) and the
// clock. Refusals are never cached, so a forged credential is never
// remembered.

// verifiedCache is a bounded map with random eviction: the cheapest policy
// that keeps memory bounded, and a miss only costs one full verification.
type verifiedCache[V any] struct {
	mu  sync.RWMutex
	max int
	m   map[[sha256.Size]byte]V
}

func newVerifiedCache[V any](max int) *verifiedCache[V] {
	if max <= 0 {
		return nil
	}
	return &verifiedCache[V]{max: max, m: make(map[[sha256.Size]byte]V)}
}

func (c *verifiedCache[V]) get(k [sha256.Size]byte) (V, bool) {
	var zero V
	if c == nil {
		return zero, false
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	v, ok := c.m[k]
	return v, ok
}

func (c *verifiedCache[V]) put(k [sha256.Size]byte, v V) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[k]; !ok && len(c.m) >= c.max {
		for old := range c.m {
			delete(c.m, old)
			break
		}
	}
	c.m[k] = v
}

func (c *verifiedCache[V]) drop(k [sha256.Size]byte) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, k)
}

// verifiedChain is a certificate chain that verified.
type verifiedChain struct {
	id          spiffeid.ID
	serial      string
	leafExpiry  time.Time
	notBefore   time.Time           // latest NotBefore on the verified chain
	notAfter    time.Time           // earliest NotAfter on the verified chain
	authorities []*x509.Certificate // the bundle's authorities it was verified against
}

func chainKey(chain []*x509.Certificate) [sha256.Size]byte {
	h := sha256.New()
	var n [8]byte
	for _, c := range chain {
		binary.BigEndian.PutUint64(n[:], uint64(len(c.Raw)))
		h.Write(n[:])
		h.Write(c.Raw)
	}
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

// window is the period in which every certificate of chain is valid.
func window(chain []*x509.Certificate) (notBefore, notAfter time.Time) {
	for i, c := range chain {
		if i == 0 || c.NotBefore.After(notBefore) {
			notBefore = c.NotBefore
		}
		if i == 0 || c.NotAfter.Before(notAfter) {
			notAfter = c.NotAfter
		}
	}
	return notBefore, notAfter
}

// sameAuthorities compares by pointer: bundle sources hand out the same
// parsed certificates until the bundle changes, and a changed bundle is
// parsed afresh.
func sameAuthorities(a, b []*x509.Certificate) bool { return slices.Equal(a, b) }

// verifiedToken is a JWT-SVID whose signature verified.
type verifiedToken struct {
	id  spiffeid.ID
	jti string
	kid string
	key crypto.PublicKey
	iat time.Time
	exp time.Time
	nbf time.Time // zero: none
}

func tokenKey(token string) [sha256.Size]byte { return sha256.Sum256([]byte(token)) }

// sameKey compares public keys by value; every key type of crypto/...
// has an Equal method (== would panic on some of them).
func sameKey(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}
