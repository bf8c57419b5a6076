package attest

import (
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Method is how a caller proved its identity.
type Method string

const (
	// MethodX509 is an X.509-SVID client certificate over mutual TLS.
	MethodX509 Method = "x509"
	// MethodJWT is a JWT-SVID sent as Authorization: Bearer.
	MethodJWT Method = "jwt"
)

// Identity is a verified caller: what the broker authorizes against.
type Identity struct {
	ID     spiffeid.ID
	Method Method
	// ExpiresAt is when the credential stops being valid (the certificate's
	// NotAfter or the token's exp). A lease should not be granted on the
	// strength of a credential for longer than the broker's policy says.
	ExpiresAt time.Time
	// Serial is the leaf certificate's serial number in lower-case hex
	// (MethodX509 only): it names the exact certificate in audit events.
	Serial string
	// JTI is the token's jti claim (MethodJWT only; empty when the token has
	// none).
	JTI string
}

// String is for logs: "spiffe://example.org/agent/a (x509 serial 1f…)".
func (id Identity) String() string {
	switch id.Method {
	case MethodX509:
		return fmt.Sprintf("%s (x509 serial %s)", id.ID, id.Serial)
	case MethodJWT:
		if id.JTI != "" {
			return fmt.Sprintf("%s (jwt jti %s)", id.ID, id.JTI)
		}
		return fmt.Sprintf("%s (jwt)", id.ID)
	}
	return id.ID.String()
}
