package console

import (
	"net/http"

	"golang.org/x/oauth2"
)

// login sends the person to the provider: a fresh state, nonce and PKCE
// verifier go into the login cookie for the callback to check.
func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	l := &loginState{State: randomToken(), Nonce: randomToken(), Verifier: oauth2.GenerateVerifier(),
		Next: safeNext(r.URL.Query().Get("next")), StepUp: r.URL.Query().Get("step_up") == "1"}
	to, err := c.op.authURL(r.Context(), l)
	if err != nil {
		c.log.Warn("console sign-in", "err", err)
		c.render(w, http.StatusServiceUnavailable, "error", map[string]any{"Status": http.StatusServiceUnavailable, "Message": err.Error()})
		return
	}
	if err := c.cookies.setLogin(w, l); err != nil {
		c.render(w, http.StatusInternalServerError, "error", map[string]any{"Status": 500, "Message": "cannot start a sign-in"})
		return
	}
	http.Redirect(w, r, to, http.StatusFound)
}

// callback finishes a sign-in and starts the session. It answers with a
// page that moves on to where the person was going, rather than with a
// redirect: a navigation that began at the provider is cross-site, and
// the browser would not send the SameSite=Strict session cookie with it.
func (c *Console) callback(w http.ResponseWriter, r *http.Request) {
	l, err := c.cookies.login(r)
	if err == nil {
		var s *session
		s, err = c.op.finish(r.Context(), r, l, c.now())
		if err == nil {
			clearCookie(w, loginCookie)
			if err = c.cookies.setSession(w, s); err == nil {
				c.log.Info("console sign-in", "person", s.Issuer+"#"+s.Subject, "email", s.Email, "step_up", l.StepUp)
				c.render(w, http.StatusOK, "signed-in", map[string]any{"Next": l.Next, "Who": display(s)})
				return
			}
		}
	}
	c.log.Warn("console sign-in refused", "remote", r.RemoteAddr, "err", err)
	c.render(w, http.StatusForbidden, "error", map[string]any{"Status": http.StatusForbidden, "Message": "sign-in failed: " + err.Error(), "SignIn": true})
}

// logout ends the session here (the provider's own session is the
// provider's to end).
func (c *Console) logout(req *request) error {
	clearCookie(req.w, sessionCookie)
	http.Redirect(req.w, req.r, "/signed-out", http.StatusSeeOther)
	return nil
}
