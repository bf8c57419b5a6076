package console

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"net/http"
	"time"

	"github.com/gorilla/securecookie"

	"github.com/latchbroker/latch/broker"
)

// Cookie names. The __Host- prefix makes the browser refuse them unless
// Secure, for this host only and for the whole path: no subdomain or
// plain-HTTP page can plant one.
const (
	sessionCookie = "__Host-latch-session"
	loginCookie   = "__Host-latch-login"
)

// loginTTL bounds a sign-in's round trip through the provider.
const loginTTL = 10 * time.Minute

// session is what the session cookie holds: who signed in, when, and the
// CSRF token of their forms. It is signed and encrypted; nothing in it is
// a secret of anyone else's.
type session struct {
	Issuer   string   `json:"iss"`
	Subject  string   `json:"sub"`
	Email    string   `json:"email,omitempty"` // verified by the provider
	Name     string   `json:"name,omitempty"`
	Groups   []string `json:"groups,omitempty"`
	AuthTime int64    `json:"auth_time"` // unix seconds
	Created  int64    `json:"created"`
	Seen     int64    `json:"seen"`
	CSRF     string   `json:"csrf"`
}

func (s *session) person() *broker.Person {
	return &broker.Person{Issuer: s.Issuer, Subject: s.Subject, Email: s.Email, Groups: s.Groups, AuthTime: time.Unix(s.AuthTime, 0)}
}

// loginState is what the login cookie holds between sending a person to
// the provider and their return: the values the callback must see again.
type loginState struct {
	State    string `json:"state"`
	Nonce    string `json:"nonce"`
	Verifier string `json:"verifier"` // PKCE
	Next     string `json:"next"`
	StepUp   bool   `json:"step_up,omitempty"`
}

// cookies encodes and decodes the console's cookies.
type cookies struct {
	codec    *securecookie.SecureCookie
	lifetime time.Duration
	idle     time.Duration
	now      func() time.Time
}

func newCookies(keys []byte, lifetime, idle time.Duration, now func() time.Time) *cookies {
	codec := securecookie.New(keys[:32], keys[32:])
	codec.SetSerializer(securecookie.JSONEncoder{})
	codec.MaxAge(int(lifetime / time.Second))
	return &cookies{codec: codec, lifetime: lifetime, idle: idle, now: now}
}

// errNoSession is a request without a live session: sign in.
var errNoSession = errors.New("no session")

// session returns the request's session, or errNoSession when it has
// none, or it is past its lifetime or idle timeout.
func (c *cookies) session(r *http.Request) (*session, error) {
	ck, err := r.Cookie(sessionCookie)
	if err != nil {
		return nil, errNoSession
	}
	var s session
	if err := c.codec.Decode(sessionCookie, ck.Value, &s); err != nil {
		return nil, errNoSession
	}
	now := c.now()
	if now.Sub(time.Unix(s.Created, 0)) > c.lifetime || now.Sub(time.Unix(s.Seen, 0)) > c.idle {
		return nil, errNoSession
	}
	return &s, nil
}

// setSession writes s, seen now, so that the idle timeout restarts.
func (c *cookies) setSession(w http.ResponseWriter, s *session) error {
	s.Seen = c.now().Unix()
	v, err := c.codec.Encode(sessionCookie, s)
	if err != nil {
		return err
	}
	maxAge := time.Unix(s.Created, 0).Add(c.lifetime).Sub(c.now())
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: v, Path: "/", MaxAge: int(maxAge / time.Second),
		Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	return nil
}

func (c *cookies) setLogin(w http.ResponseWriter, l *loginState) error {
	v, err := c.codec.Encode(loginCookie, l)
	if err != nil {
		return err
	}
	http.SetCookie(w, &http.Cookie{Name: loginCookie, Value: v, Path: "/", MaxAge: int(loginTTL / time.Second),
		// Lax, not Strict: it must come back with the provider's
		// redirect, a navigation from another site.
		Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode})
	return nil
}

func (c *cookies) login(r *http.Request) (*loginState, error) {
	ck, err := r.Cookie(loginCookie)
	if err != nil {
		return nil, errors.New("the sign-in started elsewhere or long ago (no login cookie): start again")
	}
	var l loginState
	if err := c.codec.Decode(loginCookie, ck.Value, &l); err != nil {
		return nil, errors.New("the sign-in's cookie is invalid or too old: start again")
	}
	return &l, nil
}

// clearCookie removes a cookie.
func clearCookie(w http.ResponseWriter, name string) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: "", Path: "/", MaxAge: -1, Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode})
}

// randomToken is 32 random bytes, URL-safe base64.
func randomToken() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// sameToken compares tokens in constant time.
func sameToken(a, b string) bool {
	return a != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}
