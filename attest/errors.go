package attest

import (
	"errors"
	"fmt"
)

// Kind says why a credential was refused. The values are stable, short and
// snake_case so that the HTTP layer can put them in a response, a metric
// label or an audit event as they are.
//
// Every kind except KindUnavailable means "the caller's credential was
// refused" (HTTP 401). KindUnavailable means latch itself cannot judge the
// credential right now (HTTP 503): a trust bundle is missing or the replay
// cache is full.
type Kind string

// The kinds of refusal. See the matching Err* sentinels for their meaning.
const (
	KindNoCredential       Kind = "no_credential"
	KindSeveralCredentials Kind = "several_credentials"
	KindInsecureTransport  Kind = "insecure_transport"
	KindBadCertificate     Kind = "bad_certificate"
	KindBadToken           Kind = "bad_token"
	KindBadAlgorithm       Kind = "bad_algorithm"
	KindUnknownKey         Kind = "unknown_key"
	KindUntrusted          Kind = "untrusted"
	KindForeignTrustDomain Kind = "foreign_trust_domain"
	KindExpired            Kind = "expired"
	KindNotYetValid        Kind = "not_yet_valid"
	KindLifetimeTooLong    Kind = "lifetime_too_long"
	KindWrongAudience      Kind = "wrong_audience"
	KindSeveralAudiences   Kind = "several_audiences"
	KindReplayed           Kind = "replayed"
	KindUnavailable        Kind = "unavailable"
)

// Error is a refused credential. Message is written for the caller: it says
// what is wrong with the credential it presented and never contains latch's
// internals, so the HTTP layer may send it as is. Err is the underlying
// cause (from go-spiffe, go-jose, crypto/x509) for latch's own logs only.
//
// Match an Error with errors.Is against the Err* sentinels (which compares
// kinds) or take it apart with errors.As.
type Error struct {
	Kind    Kind
	Message string
	Err     error
}

// Error returns the safe message followed by the internal cause: it is meant
// for logs. Send e.Message to the caller instead.
func (e *Error) Error() string {
	if e.Err == nil {
		return "attest: " + e.Message
	}
	return "attest: " + e.Message + ": " + e.Err.Error()
}

// Unwrap returns the internal cause.
func (e *Error) Unwrap() error { return e.Err }

// Is reports whether target is an *Error of the same kind, so that
// errors.Is(err, attest.ErrExpired) holds for every expired credential
// whatever its message.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Kind == e.Kind
}

// KindOf returns the kind of the first *Error in err's chain, or "" when err
// is not a refused credential.
func KindOf(err error) Kind {
	if e, ok := errors.AsType[*Error](err); ok {
		return e.Kind
	}
	return ""
}

// Sentinel errors. The *Error sentinels are for errors.Is; returned errors
// carry a more precise Message and a cause. Never modify a sentinel.
var (
	// ErrNoCredential: the request carried neither an X.509-SVID client
	// certificate nor an Authorization: Bearer JWT-SVID.
	ErrNoCredential = &Error{Kind: KindNoCredential, Message: "no credential: present an X.509-SVID client certificate or an Authorization: Bearer <JWT-SVID> header"}
	// ErrSeveralCredentials: the request carried both a client certificate
	// and a bearer token; latch will not guess which one speaks for it.
	ErrSeveralCredentials = &Error{Kind: KindSeveralCredentials, Message: "both a client certificate and a bearer token were presented: use exactly one"}
	// ErrInsecureTransport: the request did not arrive over TLS 1.3.
	ErrInsecureTransport = &Error{Kind: KindInsecureTransport, Message: "connect with TLS 1.3"}
	// ErrBadCertificate: the client certificate is not shaped like an
	// X.509-SVID leaf (CA flag, keyCertSign or cRLSign usage, zero or
	// several URI SANs, a URI SAN that is not a SPIFFE ID).
	ErrBadCertificate = &Error{Kind: KindBadCertificate, Message: "client certificate is not an X.509-SVID"}
	// ErrBadToken: the bearer token is not a well-formed JWT-SVID.
	ErrBadToken = &Error{Kind: KindBadToken, Message: "bearer token is not a JWT-SVID"}
	// ErrBadAlgorithm: the token is unsigned (alg none), MAC'd (HS256…) or
	// signed with an algorithm JWT-SVIDs do not use.
	ErrBadAlgorithm = &Error{Kind: KindBadAlgorithm, Message: "JWT-SVID signature algorithm not accepted"}
	// ErrUnknownKey: the token's kid names no key in its trust domain's
	// bundle.
	ErrUnknownKey = &Error{Kind: KindUnknownKey, Message: "JWT-SVID signed with a key that is not in its trust domain's bundle"}
	// ErrUntrusted: the signature or certificate chain does not verify
	// against the trust domain's bundle.
	ErrUntrusted = &Error{Kind: KindUntrusted, Message: "credential is not signed by its trust domain's authorities"}
	// ErrForeignTrustDomain: the SVID belongs to a trust domain latch is
	// not configured to accept.
	ErrForeignTrustDomain = &Error{Kind: KindForeignTrustDomain, Message: "trust domain not accepted"}
	// ErrExpired: the SVID expired (beyond the allowed clock skew).
	ErrExpired = &Error{Kind: KindExpired, Message: "SVID expired"}
	// ErrNotYetValid: the SVID's validity starts in the future (beyond the
	// allowed clock skew).
	ErrNotYetValid = &Error{Kind: KindNotYetValid, Message: "SVID not yet valid"}
	// ErrLifetimeTooLong: the JWT-SVID lives longer (exp − iat) than latch
	// accepts for a bearer token.
	ErrLifetimeTooLong = &Error{Kind: KindLifetimeTooLong, Message: "JWT-SVID lifetime too long"}
	// ErrWrongAudience: the JWT-SVID's audience does not contain latch's
	// SPIFFE ID.
	ErrWrongAudience = &Error{Kind: KindWrongAudience, Message: "JWT-SVID audience does not name this server"}
	// ErrSeveralAudiences: the JWT-SVID names other audiences besides latch;
	// any of them could replay it here.
	ErrSeveralAudiences = &Error{Kind: KindSeveralAudiences, Message: "JWT-SVID has several audiences"}
	// ErrReplayed: replay protection is on and this JWT-SVID was used before.
	ErrReplayed = &Error{Kind: KindReplayed, Message: "JWT-SVID already used"}
	// ErrUnavailable: latch cannot judge the credential now (no bundle for
	// an accepted trust domain yet, replay cache full). Retry later.
	ErrUnavailable = &Error{Kind: KindUnavailable, Message: "cannot verify credentials right now, retry later"}

	// ErrNotReady: a Workload API source did not deliver an SVID and
	// bundles within its ready timeout.
	ErrNotReady = errors.New("attest: identity source not ready")
	// ErrNoJWTSource: a bearer client was asked for, but the source cannot
	// fetch JWT-SVIDs (files without a JWT-SVID file).
	ErrNoJWTSource = errors.New("attest: this identity source cannot provide JWT-SVIDs")
)

// refuse builds a refusal of kind k. The message is formatted from
// caller-visible facts only; cause is kept for logs.
func refuse(k Kind, cause error, format string, args ...any) *Error {
	return &Error{Kind: k, Message: fmt.Sprintf(format, args...), Err: cause}
}
