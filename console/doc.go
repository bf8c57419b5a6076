// Package console is latch's web console for people: they sign in
// through the organisation's OpenID Provider (authorization code flow
// with PKCE, state and nonce; the ID token verified against the
// provider's keys), and approve or deny pending requests, watch the live
// event stream, revoke leases and pause agents, each page showing only
// what their roles allow.
//
// A person's roles come from the operators: entries that name their
// subject, verified email or groups (templates.Policy.Person), read anew
// on every request; the console's refusals are the broker's own
// (broker.AuthorizePerson, Approvals.Review), so a button left out of a
// page is refused anyway when forged.
//
// Sessions are cookies, signed and encrypted (gorilla/securecookie),
// HttpOnly, Secure and SameSite=Strict, with a lifetime and an idle
// timeout; every state change carries the session's CSRF token, and every
// page a strict Content-Security-Policy. Approving a critical request
// needs an authentication no older than the step-up age: the console sends
// the person back to the provider first.
package console
