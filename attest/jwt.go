package attest

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
)

// jwtAlgorithms are the algorithms JWT-SVIDs are signed with (the same list
// go-spiffe accepts). Everything else — none, HS256 and other MACs, EdDSA —
// is refused before any key is looked up.
var jwtAlgorithms = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512,
	jose.ES256, jose.ES384, jose.ES512,
	jose.PS256, jose.PS384, jose.PS512,
}

// VerifyJWT verifies a JWT-SVID bearer token: signed by a key in the JWT
// bundle of an accepted trust domain (checked by go-spiffe's
// jwtsvid.ParseAndValidate), within its validity and the clock skew, no
// longer-lived than the maximum, for an audience that names this server
// (and only this server unless configured otherwise), and not seen before
// when replay protection is on.
//
// It returns an *Error of kind KindBadToken, KindBadAlgorithm,
// KindForeignTrustDomain, KindUnavailable, KindUnknownKey, KindUntrusted,
// KindExpired, KindNotYetValid, KindLifetimeTooLong, KindWrongAudience,
// KindSeveralAudiences or KindReplayed. Kinds that judge the token's claims
// are only reported once its signature has verified, so a forged token is
// never recorded as, say, an expired token of the workload it names.
func (v *Verifier) VerifyJWT(token string) (Identity, error) {
	if v.jwt == nil {
		return Identity{}, refuse(KindBadToken, nil, "this server does not accept bearer tokens: use an X.509-SVID client certificate")
	}
	if token == "" {
		return Identity{}, refuse(KindBadToken, nil, "empty bearer token")
	}
	if len(token) > MaxTokenSize {
		return Identity{}, refuse(KindBadToken, nil, "bearer token longer than %d bytes", MaxTokenSize)
	}
	now := v.now()
	cacheKey := tokenKey(token)
	if e, ok := v.tokens.get(cacheKey); ok {
		if b, err := v.jwt.GetJWTBundleForTrustDomain(e.id.TrustDomain()); err == nil {
			if key, ok := b.FindJWTAuthority(e.kid); ok && sameKey(key, e.key) {
				// The signature was verified before and the key still
				// stands: only the clock can have changed the answer.
				if err := v.checkTimes(e.iat, e.exp, e.nbf, now); err != nil {
					v.tokens.drop(cacheKey)
					return Identity{}, err
				}
				return v.accept(e, token, now)
			}
		}
		v.tokens.drop(cacheKey) // the key was rotated out: judge it afresh
	}

	if err := checkAlgorithm(token); err != nil {
		return Identity{}, err
	}
	tok, err := jwt.ParseSigned(token, jwtAlgorithms)
	if err != nil {
		return Identity{}, refuse(KindBadToken, err, "bearer token is not a signed JWT")
	}
	hdr := tok.Headers[0]
	if typ, ok := hdr.ExtraHeaders[jose.HeaderType]; ok && typ != "JWT" && typ != "JOSE" {
		return Identity{}, refuse(KindBadToken, nil, "JWT-SVID header typ must be JWT or JOSE")
	}
	var claims jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&claims); err != nil {
		return Identity{}, refuse(KindBadToken, err, "JWT-SVID claims are malformed")
	}
	if claims.Subject == "" {
		return Identity{}, refuse(KindBadToken, nil, "JWT-SVID has no sub claim")
	}
	id, err := spiffeid.FromString(claims.Subject)
	if err != nil {
		return Identity{}, refuse(KindBadToken, err, "JWT-SVID sub claim is not a SPIFFE ID")
	}
	if id.Path() == "" {
		return Identity{}, refuse(KindBadToken, nil, "JWT-SVID sub names a trust domain, not a workload")
	}
	td := id.TrustDomain()
	if !v.accepts(td) {
		return Identity{}, refuse(KindForeignTrustDomain, nil, "trust domain %q is not accepted by this server", td.Name())
	}
	// One bundle snapshot serves the key lookup and go-spiffe's
	// verification, so what is cached is exactly what was verified.
	bundle, err := v.jwt.GetJWTBundleForTrustDomain(td)
	if err != nil {
		return Identity{}, refuse(KindUnavailable, err, "no JWT bundle for trust domain %q yet, retry later", td.Name())
	}
	if hdr.KeyID == "" {
		return Identity{}, refuse(KindBadToken, nil, "JWT-SVID header has no kid")
	}
	key, ok := bundle.FindJWTAuthority(hdr.KeyID)
	if !ok {
		return Identity{}, refuse(KindUnknownKey, nil, "JWT-SVID kid %q is not in the JWT bundle of trust domain %q", clip(hdr.KeyID), td.Name())
	}

	svid, err := jwtsvid.ParseAndValidate(token, bundle, []string{v.idString})
	if err != nil {
		// go-spiffe's errors are strings. Tell the caller why in kinds,
		// but only after the signature has proven the claims genuine.
		if sigErr := tok.Claims(key, new(map[string]any)); sigErr != nil {
			return Identity{}, refuse(KindUntrusted, sigErr, "JWT-SVID signature does not verify with the key of trust domain %q", td.Name())
		}
		if kerr := v.checkClaims(&claims, now); kerr != nil {
			kerr.Err = err
			return Identity{}, kerr
		}
		return Identity{}, refuse(KindBadToken, err, "JWT-SVID rejected")
	}
	// go-spiffe has checked signature, exp and audience with its own clock
	// and leeway; latch's stricter checks run on the injected clock.
	if kerr := v.checkClaims(&claims, now); kerr != nil {
		return Identity{}, kerr
	}
	e := verifiedToken{id: svid.ID, jti: claims.ID, kid: hdr.KeyID, key: key, iat: claims.IssuedAt.Time(), exp: svid.Expiry}
	if claims.NotBefore != nil {
		e.nbf = claims.NotBefore.Time()
	}
	v.tokens.put(cacheKey, e)
	return v.accept(e, token, now)
}

// accept records a verified token with the replay cache, if on, and
// returns its identity.
func (v *Verifier) accept(e verifiedToken, token string, now time.Time) (Identity, error) {
	if v.replay != nil {
		if err := v.replay.add(replayKey(e.id.TrustDomain(), e.jti, token), e.exp.Add(v.skew), now); err != nil {
			return Identity{}, err
		}
	}
	return Identity{ID: e.id, Method: MethodJWT, ExpiresAt: e.exp, JTI: e.jti}, nil
}

// checkClaims applies latch's own rules on times and audience.
func (v *Verifier) checkClaims(c *jwt.Claims, now time.Time) *Error {
	if c.Expiry == nil {
		return refuse(KindBadToken, nil, "JWT-SVID has no exp claim")
	}
	if c.IssuedAt == nil {
		return refuse(KindBadToken, nil, "JWT-SVID has no iat claim: latch needs it to bound the token's lifetime")
	}
	var nbf time.Time
	if c.NotBefore != nil {
		nbf = c.NotBefore.Time()
	}
	if err := v.checkTimes(c.IssuedAt.Time(), c.Expiry.Time(), nbf, now); err != nil {
		return err
	}
	if !slices.Contains(c.Audience, v.idString) {
		return refuse(KindWrongAudience, nil, "JWT-SVID audience must contain %s", v.idString)
	}
	if len(c.Audience) > 1 && !v.severalAud {
		return refuse(KindSeveralAudiences, nil, "JWT-SVID has %d audiences: fetch one for %s alone", len(c.Audience), v.idString)
	}
	return nil
}

// checkTimes judges iat, exp and nbf (zero: absent) at now, with the clock
// skew, and the lifetime exp − iat.
func (v *Verifier) checkTimes(iat, exp, nbf, now time.Time) *Error {
	switch {
	case !nbf.IsZero() && now.Add(v.skew).Before(nbf):
		return refuse(KindNotYetValid, nil, "JWT-SVID not valid before %s", nbf.UTC().Format(time.RFC3339))
	case now.Add(v.skew).Before(iat):
		return refuse(KindNotYetValid, nil, "JWT-SVID issued in the future (%s): check the clocks", iat.UTC().Format(time.RFC3339))
	case !exp.After(now.Add(-v.skew)):
		return refuse(KindExpired, nil, "JWT-SVID expired at %s: fetch a fresh one", exp.UTC().Format(time.RFC3339))
	case exp.Before(iat):
		return refuse(KindBadToken, nil, "JWT-SVID expires before it was issued")
	case exp.Sub(iat) > v.maxLifetime:
		return refuse(KindLifetimeTooLong, nil, "JWT-SVID lifetime %s exceeds the %s this server accepts", exp.Sub(iat), v.maxLifetime)
	}
	return nil
}

// checkAlgorithm reads the alg header itself: go-jose refuses unlisted
// algorithms with one generic parse error, and "alg: none" or HS256 deserve
// their own kind.
func checkAlgorithm(token string) error {
	header, _, ok := strings.Cut(token, ".")
	if !ok || strings.Count(token, ".") != 2 {
		return refuse(KindBadToken, nil, "bearer token is not a compact JWS (header.payload.signature)")
	}
	raw, err := base64.RawURLEncoding.DecodeString(header)
	if err != nil {
		return refuse(KindBadToken, err, "bearer token header is not base64url")
	}
	var h struct {
		Alg string `json:"alg"`
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		return refuse(KindBadToken, err, "bearer token header is not a JSON object")
	}
	if !slices.Contains(jwtAlgorithms, jose.SignatureAlgorithm(h.Alg)) {
		return refuse(KindBadAlgorithm, nil, "JWT-SVID alg %q not accepted: JWT-SVIDs are signed with RS, ES or PS algorithms", clip(h.Alg))
	}
	return nil
}

// replayKey names one token for the replay cache: its issuer's trust
// domain and jti, or, for tokens without a jti (SPIRE does not set one),
// a digest of the signed part. The signature is left out on purpose: ECDSA
// signatures are malleable, so one token has several valid encodings.
func replayKey(td spiffeid.TrustDomain, jti, token string) string {
	if jti != "" {
		return td.Name() + "\x00jti\x00" + jti
	}
	signed := token[:strings.LastIndexByte(token, '.')]
	sum := sha256.Sum256([]byte(signed))
	return "\x00sig\x00" + string(sum[:])
}

// clip keeps caller-supplied strings short in messages.
func clip(s string) string {
	const max = 64
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}
