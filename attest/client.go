package attest

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ClientTLSConfig returns a TLS 1.3 client configuration that accepts the
// server only if it presents an X.509-SVID for serverID that verifies
// against bundles; host names play no part. When svid is not nil the
// client presents its X.509-SVID (mutual TLS); pass nil for a client that
// authenticates with bearer tokens instead.
func ClientTLSConfig(svid x509svid.Source, bundles x509bundle.Source, serverID spiffeid.ID) *tls.Config {
	var cfg *tls.Config
	if svid != nil {
		cfg = tlsconfig.MTLSClientConfig(svid, bundles, tlsconfig.AuthorizeID(serverID))
	} else {
		cfg = tlsconfig.TLSClientConfig(bundles, tlsconfig.AuthorizeID(serverID))
	}
	cfg.MinVersion = tls.VersionTLS13
	return cfg
}

// BearerTransport sends every request with a JWT-SVID for Audience in its
// Authorization header.
//
// It fetches a token per request instead of caching one: the SPIRE agent
// already caches JWT-SVIDs, and a server with replay protection needs a
// fresh token each time anyway.
type BearerTransport struct {
	// Base carries the request (nil: http.DefaultTransport). It must verify
	// the server, or the token goes to whoever answers: see NewHTTPClient.
	Base http.RoundTripper
	// Source fetches JWT-SVIDs.
	Source jwtsvid.Source
	// Audience is the server's SPIFFE ID.
	Audience spiffeid.ID
	// Subject picks one of several identities of this process (optional).
	Subject spiffeid.ID
}

var _ http.RoundTripper = (*BearerTransport)(nil)

// RoundTrip implements http.RoundTripper.
func (t *BearerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	svid, err := t.Source.FetchJWTSVID(req.Context(), jwtsvid.Params{Audience: t.Audience.String(), Subject: t.Subject})
	if err != nil {
		if req.Body != nil {
			_ = req.Body.Close() // RoundTrip must close the body, even on errors
		}
		return nil, err
	}
	out := req.Clone(req.Context())
	out.Header.Set("Authorization", "Bearer "+svid.Marshal())
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	return base.RoundTrip(out)
}

// NewHTTPClient returns an *http.Client for calling latch at serverID over
// TLS 1.3. With MethodX509 it presents src's X.509-SVID (mutual TLS); with
// MethodJWT it presents no certificate and sends a JWT-SVID for serverID as
// a bearer token on every request. Either way the server must prove it is
// serverID with an X.509-SVID that verifies against src's bundles.
func NewHTTPClient(src *Source, serverID spiffeid.ID, method Method) (*http.Client, error) {
	if serverID.IsZero() {
		return nil, errors.New("attest: client: server ID is required")
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.ForceAttemptHTTP2 = true
	switch method {
	case MethodX509:
		if _, err := src.GetX509SVID(); err != nil {
			return nil, fmt.Errorf("attest: client: mutual TLS needs an X.509-SVID: %w", err)
		}
		tr.TLSClientConfig = ClientTLSConfig(src, src, serverID)
		return &http.Client{Transport: tr}, nil
	case MethodJWT:
		if src.jwtSVID == nil {
			return nil, fmt.Errorf("%w (%s)", ErrNoJWTSource, src)
		}
		tr.TLSClientConfig = ClientTLSConfig(nil, src, serverID)
		return &http.Client{Transport: &BearerTransport{Base: tr, Source: src, Audience: serverID}}, nil
	}
	return nil, fmt.Errorf("attest: client: unknown method %q (want %q or %q)", method, MethodX509, MethodJWT)
}
