package console

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/latchbroker/latch/attest"
	"github.com/latchbroker/latch/broker"
)

// `latch login` signs a person in through the browser (RFC 8252): the CLI
// listens on a loopback port, opens /cli/login with its redirect URI, a
// state and a PKCE challenge; the person signs in (the console's own
// OIDC sign-in) and allows it; the console sends the browser to the
// loopback URI with a code; the CLI exchanges the code and its PKCE
// verifier at /cli/token for a latch session token, which it presents as
// a bearer token to the operator API this listener serves under /v1/.
//
// Codes and tokens are sealed by the session keys (signed and
// encrypted), so any replica with the same keys accepts them; a code
// lives cliCodeTTL and is useless without the verifier only the CLI
// holds.

// Names the codec seals with: a token is never a cookie, nor a code.
const (
	cliCodeName  = "latch-cli-code"
	cliTokenName = "latch-cli-token"
	cliCodeTTL   = time.Minute
)

// cliGrant is what a code carries to the token exchange.
type cliGrant struct {
	Session   session `json:"session"`
	Challenge string  `json:"challenge"`
	Redirect  string  `json:"redirect"`
	Expires   int64   `json:"exp"`
}

// cliRequest is /cli/login's query: what the CLI sent the browser with.
type cliRequest struct{ Redirect, State, Challenge string }

func cliRequestOf(v url.Values) (cliRequest, error) {
	r := cliRequest{Redirect: v.Get("redirect_uri"), State: v.Get("state"), Challenge: v.Get("code_challenge")}
	switch {
	case !loopbackRedirect(r.Redirect):
		return r, broker.Errorf(broker.EINVALID, "redirect_uri must be http://127.0.0.1:PORT/… or http://[::1]:PORT/… (the CLI's loopback listener)")
	case r.State == "" || len(r.State) > 128:
		return r, broker.Errorf(broker.EINVALID, "state is required (at most 128 bytes)")
	case len(r.Challenge) != 43 || v.Get("code_challenge_method") != "S256":
		return r, broker.Errorf(broker.EINVALID, "a PKCE code_challenge (S256) is required")
	}
	return r, nil
}

// loopbackRedirect accepts only a loopback IP literal with a port, over
// plain HTTP (RFC 8252 section 7.3): nothing the browser could send to
// another host.
func loopbackRedirect(s string) bool {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "http" || u.User != nil || u.Port() == "" || u.Fragment != "" {
		return false
	}
	ip := net.ParseIP(u.Hostname())
	return ip != nil && ip.IsLoopback()
}

// cliLogin asks the signed-in person to allow the CLI's sign-in.
func (c *Console) cliLogin(req *request) error {
	r, err := cliRequestOf(req.r.URL.Query())
	if err != nil {
		return err
	}
	c.render(req.w, http.StatusOK, "cli-login", c.page(req, "", map[string]any{"R": r}))
	return nil
}

// cliAllow sends the browser back to the CLI with a code.
func (c *Console) cliAllow(req *request) error {
	r, err := cliRequestOf(req.r.PostForm)
	if err != nil {
		return err
	}
	g := cliGrant{Session: *req.s, Challenge: r.Challenge, Redirect: r.Redirect, Expires: c.now().Add(cliCodeTTL).Unix()}
	code, err := c.cookies.codec.Encode(cliCodeName, g)
	if err != nil {
		return err
	}
	to, _ := url.Parse(r.Redirect)
	q := to.Query()
	q.Set("code", code)
	q.Set("state", r.State)
	to.RawQuery = q.Encode()
	// A page, not a redirect: the form's CSP would refuse a redirect to
	// the loopback origin.
	c.render(req.w, http.StatusOK, "signed-in", map[string]any{"Next": to.String(), "Who": display(req.s)})
	return nil
}

// cliToken is the result of the token exchange.
type cliToken struct {
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
	Person    string    `json:"person"`
	Email     string    `json:"email,omitempty"`
}

// cliExchange swaps a code and its PKCE verifier for a session token.
func (c *Console) cliExchange(w http.ResponseWriter, r *http.Request) {
	refuse := func(status int, msg string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
	}
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	if err := r.ParseForm(); err != nil {
		refuse(http.StatusBadRequest, "a form body is required")
		return
	}
	var g cliGrant
	if err := c.cookies.codec.Decode(cliCodeName, r.PostForm.Get("code"), &g); err != nil || c.now().Unix() > g.Expires {
		refuse(http.StatusBadRequest, "the code is invalid or expired: run latch login again")
		return
	}
	sum := sha256.Sum256([]byte(r.PostForm.Get("code_verifier")))
	if !sameToken(base64.RawURLEncoding.EncodeToString(sum[:]), g.Challenge) || r.PostForm.Get("redirect_uri") != g.Redirect {
		refuse(http.StatusBadRequest, "the code_verifier or redirect_uri does not match the code")
		return
	}
	s := g.Session
	s.Created, s.CSRF = c.now().Unix(), ""
	token, err := c.cookies.codec.Encode(cliTokenName, s)
	if err != nil {
		refuse(http.StatusInternalServerError, "cannot issue a session token")
		return
	}
	c.log.Info("latch login", "person", s.Issuer+"#"+s.Subject, "email", s.Email)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(cliToken{Token: token, ExpiresAt: time.Unix(s.Created, 0).Add(c.cfg.SessionLifetime).UTC(),
		Person: s.Issuer + "#" + s.Subject, Email: s.Email})
}

// Person identifies the caller of the operator API on this listener by
// the session token `latch login` got: "Authorization: Bearer TOKEN".
// It implements httpapi.People. A token lasts the session lifetime from
// its exchange; it has no idle timeout (nothing rewrites it).
func (c *Console) Person(r *http.Request) (*broker.Person, error) {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		return nil, &attest.Error{Kind: attest.KindNoCredential, Message: "no latch session: run latch login"}
	}
	var s session
	if err := c.cookies.codec.Decode(cliTokenName, token, &s); err != nil {
		return nil, &attest.Error{Kind: attest.KindBadToken, Message: "the latch session token is not valid here: run latch login", Err: err}
	}
	if c.now().Sub(time.Unix(s.Created, 0)) > c.cfg.SessionLifetime {
		return nil, &attest.Error{Kind: attest.KindExpired, Message: "the latch session has expired: run latch login"}
	}
	return s.person(), nil
}
