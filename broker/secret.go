package broker

import (
	"fmt"
	"log/slog"
	"maps"
	"slices"
)

// redacted is what every printing, logging and encoding path shows for a
// Secret.
const redacted = "[redacted]"

// Secret is a minted credential: named string fields such as "token",
// "username" and "password", or "certificate", "private_key" and
// "ca_chain". It redacts itself everywhere a value can end up by accident:
// fmt (every verb, %v %+v %#v %s %q %x ...), log/slog, encoding/json and
// encoding.TextMarshaler users all see "[redacted]". Only Reveal yields the
// fields, and only the API response writer should call it.
//
// The fields live inside a closure: fmt prints a func as an address, and
// reflection cannot look into one, so even a Secret inside an unexported
// struct field — which fmt prints by reflection without calling Format,
// for any verb — shows as an address, not as the fields. A Secret is
// immutable; the zero Secret has no fields.
type Secret struct {
	fields func() map[string]string
}

// NewSecret returns a Secret holding a copy of fields.
func NewSecret(fields map[string]string) Secret {
	m := maps.Clone(fields)
	return Secret{fields: func() map[string]string { return m }}
}

// Reveal returns a copy of the secret's fields. It is the one way to read
// them: call it only where the secret is handed to its owner.
func (s Secret) Reveal() map[string]string {
	if s.fields == nil {
		return map[string]string{}
	}
	return maps.Clone(s.fields())
}

// Keys returns the field names, sorted. Names are not secret: they say what
// kind of credential this is (for example in an audit event).
func (s Secret) Keys() []string {
	if s.fields == nil {
		return nil
	}
	return slices.Sorted(maps.Keys(s.fields()))
}

// IsZero reports whether the secret has no fields.
func (s Secret) IsZero() bool { return s.fields == nil || len(s.fields()) == 0 }

// String implements fmt.Stringer.
func (Secret) String() string { return redacted }

// GoString implements fmt.GoStringer (%#v).
func (Secret) GoString() string { return redacted }

// Format implements fmt.Formatter, so every verb and flag prints the same.
func (Secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(redacted)) }

// MarshalJSON implements json.Marshaler: a Secret in any JSON document (a
// log line, an audit event, a stored record) is "[redacted]".
func (Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// MarshalText implements encoding.TextMarshaler, which YAML, TOML and
// slog's text handler fall back to.
func (Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// LogValue implements slog.LogValuer.
func (Secret) LogValue() slog.Value { return slog.StringValue(redacted) }
