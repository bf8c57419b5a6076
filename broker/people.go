package broker

import (
	"context"
	"strings"
	"time"
)

// Person is a person signed in through the organisation's OpenID
// Provider (the console, or `latch login`). Their roles come from the
// operators: entries that name their subject, their verified email or
// one of their groups (templates.Policy.Person), read anew for every
// action, so a config reload takes a role away at once.
type Person struct {
	Issuer  string
	Subject string
	// Email is the email the provider verified; empty when it did not.
	Email  string
	Groups []string
	// AuthTime is when the person last authenticated to the provider.
	AuthTime time.Time
}

// ID is the actor a person's actions are recorded under: the issuer and
// the subject, which together name one person for good (an email can
// change hands). An issuer URL has no fragment, so "#" cannot be part of
// it.
func (p *Person) ID() string { return p.Issuer + "#" + p.Subject }

// IsPersonID reports whether actor is a person's ID rather than a SPIFFE
// ID or the admin socket.
func IsPersonID(actor string) bool {
	return strings.HasPrefix(actor, "https://") && strings.Contains(actor, "#")
}

type personKey struct{}

// WithPerson returns ctx carrying the signed-in person whose request it
// is. The Service's own guards (reviews, resuming, ending a freeze) read
// the person's roles and email from it.
func WithPerson(ctx context.Context, p *Person) context.Context {
	return context.WithValue(ctx, personKey{}, p)
}

// personFrom returns the person ctx carries when actor is that person.
func personFrom(ctx context.Context, actor string) *Person {
	p, _ := ctx.Value(personKey{}).(*Person)
	if p == nil || p.ID() != actor {
		return nil
	}
	return p
}

// authorizeIn is Authorize for the actor of a request whose ctx may
// carry the person (WithPerson).
func authorizeIn(ctx context.Context, s *core, actor string, action Action, what string) error {
	if p := personFrom(ctx, actor); p != nil {
		return AuthorizePerson(s.policy.Load(), p, action, what)
	}
	return Authorize(s.policy.Load(), actor, action, what)
}
