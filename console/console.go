package console

import (
	"context"
	"embed"
	"errors"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/api"
)

//go:embed templates/*.html
var pageFiles embed.FS

//go:embed static
var staticFiles embed.FS

// Console serves the web console. It calls the Service in-process, as the
// HTTP API does, with the signed-in person in each call's context.
type Console struct {
	cfg     Config
	svc     *broker.Service
	log     *slog.Logger
	now     func() time.Time
	op      *provider
	cookies *cookies
	pages   *template.Template
	csp     string
	mux     *http.ServeMux
	streams chan struct{} // a slot per open live view
}

// New returns the console for cfg over svc.
func New(cfg Config, svc *broker.Service, log *slog.Logger) (*Console, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	pages, err := template.New("").Funcs(funcs).ParseFS(pageFiles, "templates/*.html")
	if err != nil {
		return nil, err
	}
	c := &Console{cfg: cfg, svc: svc, log: log, now: time.Now, op: newProvider(&cfg), pages: pages,
		streams: make(chan struct{}, maxStreams)}
	c.cookies = newCookies(cfg.SessionKeys, cfg.SessionLifetime, cfg.IdleTimeout, c.now)
	c.csp = contentPolicy(cfg.Issuer)
	c.routes()
	return c, nil
}

func (c *Console) routes() {
	static, _ := fs.Sub(staticFiles, "static")
	m := http.NewServeMux()
	m.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	m.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/approvals", http.StatusSeeOther) })
	m.HandleFunc("GET /login", c.login)
	m.HandleFunc("GET /callback", c.callback)
	m.HandleFunc("GET /signed-out", func(w http.ResponseWriter, r *http.Request) { c.render(w, http.StatusOK, "signed-out", nil) })
	m.HandleFunc("POST /logout", c.signedIn(c.logout))
	m.HandleFunc("GET /approvals", c.signedIn(c.approvals))
	m.HandleFunc("GET /approvals/{id}", c.signedIn(c.approval))
	m.HandleFunc("POST /approvals/{id}/review", c.signedIn(c.review))
	m.HandleFunc("GET /leases", c.signedIn(c.leases))
	m.HandleFunc("GET /revoke", c.signedIn(c.confirmRevoke))
	m.HandleFunc("POST /revoke", c.signedIn(c.revoke))
	m.HandleFunc("GET /agents", c.signedIn(c.agents))
	m.HandleFunc("POST /agents/state", c.signedIn(c.setAgentState))
	m.HandleFunc("GET /report", c.signedIn(c.report))
	m.HandleFunc("GET /audit", c.signedIn(c.audit))
	m.HandleFunc("GET /cli/login", c.signedIn(c.cliLogin))
	m.HandleFunc("POST /cli/login", c.signedIn(c.cliAllow))
	m.HandleFunc("POST /cli/token", c.cliExchange)
	m.HandleFunc("GET /live", c.signedIn(c.live))
	m.HandleFunc("GET /events", c.signedIn(c.events))
	c.mux = m
}

// ServeHTTP serves every console page with the security headers.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", c.csp)
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")
	h.Set("Strict-Transport-Security", "max-age=31536000")
	c.mux.ServeHTTP(w, r)
}

// contentPolicy allows the console's own scripts, styles and forms, and
// the provider as a form's redirect target (a step-up sends an approval's
// form there); nothing inline, no frames.
func contentPolicy(issuer string) string {
	origin := "'self'"
	if u, err := url.Parse(issuer); err == nil {
		origin += " " + u.Scheme + "://" + u.Host
	}
	return "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
		"form-action " + origin + "; frame-ancestors 'none'; base-uri 'none'"
}

// request is one signed-in request.
type request struct {
	w      http.ResponseWriter
	r      *http.Request
	s      *session
	person *broker.Person
	ctx    context.Context // carries the person (broker.WithPerson)
}

// signedIn serves h to a person with a live session who may read (the
// viewer role, or any that includes it), and sends anyone else to sign
// in. Every state change (POST) must carry the session's CSRF token.
func (c *Console) signedIn(h func(*request) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s, err := c.cookies.session(r)
		if err != nil {
			next := "/approvals" // a form's target is no page to return to
			if r.Method == http.MethodGet {
				next = r.URL.RequestURI()
			}
			c.toSignIn(w, r, next, false)
			return
		}
		p := s.person()
		req := &request{w: w, r: r, s: s, person: p, ctx: broker.WithPerson(r.Context(), p)}
		if err := c.admit(req); err != nil {
			c.fail(req, err)
			return
		}
		if err := c.cookies.setSession(w, s); err != nil {
			c.fail(req, err)
			return
		}
		if err := h(req); err != nil {
			c.fail(req, err)
		}
	}
}

// admit checks the CSRF token of a state change and the person's right
// to see the console at all; a refusal is audited as a violation.
func (c *Console) admit(req *request) error {
	if req.r.Method == http.MethodPost && !sameToken(req.r.PostFormValue("csrf"), req.s.CSRF) {
		return c.violation(req, "csrf_token", "the form carries no valid CSRF token: reload the page and try again")
	}
	if req.r.URL.Path == "/logout" {
		return nil // anyone signed in may sign out, roles or none
	}
	if err := broker.AuthorizePerson(c.svc.Policy(), req.person, broker.ActionRead, "the console"); err != nil {
		var e *broker.Error
		if errors.As(err, &e) {
			return c.violation(req, "missing_role", e.Message+" (signed in as "+display(req.s)+")")
		}
		return err
	}
	return nil
}

// violation audits a refused console request and returns the refusal.
func (c *Console) violation(req *request, reason, msg string) error {
	ref := broker.Refusal{Actor: req.person.ID(), Endpoint: "console " + req.r.Method + " " + req.r.URL.Path, Reason: reason,
		Message: msg, Remote: req.r.RemoteAddr}
	if err := c.svc.Audit().Violation(req.r.Context(), ref); err != nil {
		c.log.Error("audit a refused console request", "err", err)
	}
	return &broker.Error{Code: broker.EFORBIDDEN, Message: msg, Reasons: []string{reason}}
}

// toSignIn sends a person to the provider (a step-up asks it to
// authenticate them again), and back to next.
func (c *Console) toSignIn(w http.ResponseWriter, r *http.Request, next string, stepUp bool) {
	q := url.Values{"next": {next}}
	if stepUp {
		q.Set("step_up", "1")
	}
	http.Redirect(w, r, "/login?"+q.Encode(), http.StatusSeeOther)
}

// fail renders err as an error page with its status; the message of a
// broker error is safe to show, any other error is logged and not shown.
func (c *Console) fail(req *request, err error) {
	status, msg := http.StatusInternalServerError, "the console failed; see latch's log"
	var e *broker.Error
	if errors.As(err, &e) && e.Code != broker.EINTERNAL {
		status, msg = api.Status(e.Code), e.Message
	} else {
		c.log.Error("console", "route", req.r.Method+" "+req.r.URL.Path, "err", err)
	}
	data := map[string]any{"Status": status, "Message": msg, "Current": ""}
	if req.s != nil {
		data["Who"], data["PersonID"], data["CSRF"] = display(req.s), req.person.ID(), req.s.CSRF
	}
	c.render(req.w, status, "error", data)
}

func (c *Console) render(w http.ResponseWriter, status int, page string, data any) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := c.pages.ExecuteTemplate(w, page, data); err != nil {
		c.log.Error("render a console page", "page", page, "err", err)
	}
}

// display is how a signed-in person is shown: their email, else their
// subject.
func display(s *session) string {
	if s == nil {
		return ""
	}
	if s.Email != "" {
		return s.Email
	}
	return s.Subject
}
