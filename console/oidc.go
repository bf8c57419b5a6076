package console

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"
)

// provider is the OpenID Provider, discovered on first use (and again
// after a failure), so that latch starts while the provider is down.
type provider struct {
	cfg    *Config
	client *http.Client

	mu       sync.Mutex
	oauth    *oauth2.Config
	verifier *oidc.IDTokenVerifier
}

func newProvider(cfg *Config) *provider {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: cfg.Roots}
	return &provider{cfg: cfg, client: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
}

// discover returns the OAuth2 config and ID token verifier.
func (p *provider) discover(ctx context.Context) (*oauth2.Config, *oidc.IDTokenVerifier, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.oauth != nil {
		return p.oauth, p.verifier, nil
	}
	// The provider keeps ctx's client for its key set: not the request's
	// ctx, which ends with the request.
	pctx := oidc.ClientContext(context.WithoutCancel(ctx), p.client)
	op, err := oidc.NewProvider(pctx, p.cfg.Issuer)
	if err != nil {
		return nil, nil, fmt.Errorf("the OpenID Provider %s cannot be reached or is misconfigured: %w", p.cfg.Issuer, err)
	}
	scopes := p.cfg.Scopes
	if !slices.Contains(scopes, oidc.ScopeOpenID) {
		scopes = append([]string{oidc.ScopeOpenID}, scopes...)
	}
	p.oauth = &oauth2.Config{ClientID: p.cfg.ClientID, ClientSecret: p.cfg.ClientSecret, Endpoint: op.Endpoint(),
		RedirectURL: p.redirectURL(), Scopes: scopes}
	p.verifier = op.Verifier(&oidc.Config{ClientID: p.cfg.ClientID})
	return p.oauth, p.verifier, nil
}

func (p *provider) redirectURL() string {
	if p.cfg.RedirectURL != "" {
		return p.cfg.RedirectURL
	}
	return p.cfg.base() + "/callback"
}

// authURL starts a sign-in: the provider's authorization URL for l.
// A step-up asks the provider to authenticate the person again.
func (p *provider) authURL(ctx context.Context, l *loginState) (string, error) {
	oc, _, err := p.discover(ctx)
	if err != nil {
		return "", err
	}
	opts := []oauth2.AuthCodeOption{oidc.Nonce(l.Nonce), oauth2.S256ChallengeOption(l.Verifier)}
	if l.StepUp {
		opts = append(opts, oauth2.SetAuthURLParam("max_age", "0"), oauth2.SetAuthURLParam("prompt", "login"))
	}
	return oc.AuthCodeURL(l.State, opts...), nil
}

// claims are the ID token claims latch reads.
type claims struct {
	Email         string `json:"email"`
	EmailVerified *bool  `json:"email_verified"`
	Name          string `json:"name"`
	AuthTime      int64  `json:"auth_time"`
}

// finish completes a sign-in: it checks state, exchanges the code (with
// the PKCE verifier), verifies the ID token (signature from the
// provider's keys, issuer, audience, expiry) and its nonce, and returns
// the session it establishes.
func (p *provider) finish(ctx context.Context, r *http.Request, l *loginState, now time.Time) (*session, error) {
	q := r.URL.Query()
	if e := q.Get("error"); e != "" {
		return nil, fmt.Errorf("the provider refused the sign-in: %s %s", clip(e, 100), clip(q.Get("error_description"), 200))
	}
	if !sameToken(q.Get("state"), l.State) {
		return nil, errors.New("the sign-in's state does not match: start again")
	}
	oc, verifier, err := p.discover(ctx)
	if err != nil {
		return nil, err
	}
	tok, err := oc.Exchange(oidc.ClientContext(ctx, p.client), q.Get("code"), oauth2.VerifierOption(l.Verifier))
	if err != nil {
		return nil, fmt.Errorf("the provider did not exchange the code: %w", err)
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		return nil, errors.New("the provider sent no ID token")
	}
	id, err := verifier.Verify(ctx, raw)
	if err != nil {
		return nil, fmt.Errorf("the ID token does not verify: %w", err)
	}
	if !sameToken(id.Nonce, l.Nonce) {
		return nil, errors.New("the ID token's nonce does not match the sign-in's")
	}
	return p.sessionOf(id, now)
}

func (p *provider) sessionOf(id *oidc.IDToken, now time.Time) (*session, error) {
	var c claims
	if err := id.Claims(&c); err != nil {
		return nil, fmt.Errorf("the ID token's claims: %w", err)
	}
	groups, err := groupsOf(id, p.cfg.GroupsClaim)
	if err != nil {
		return nil, err
	}
	s := &session{Issuer: id.Issuer, Subject: id.Subject, Name: clip(c.Name, 200), Groups: groups,
		AuthTime: c.AuthTime, Created: now.Unix(), CSRF: randomToken()}
	if s.AuthTime == 0 {
		s.AuthTime = id.IssuedAt.Unix() // a provider that leaves auth_time out authenticated just now
	}
	if c.EmailVerified != nil && *c.EmailVerified {
		s.Email = strings.ToLower(c.Email)
	}
	return s, nil
}

// groupsOf reads the groups claim: a list of strings, or one string.
func groupsOf(id *oidc.IDToken, claim string) ([]string, error) {
	if claim == "" {
		return nil, nil
	}
	var all map[string]any
	if err := id.Claims(&all); err != nil {
		return nil, err
	}
	switch v := all[claim].(type) {
	case nil:
		return nil, nil
	case string:
		return []string{v}, nil
	case []any:
		out := make([]string, 0, len(v))
		for _, g := range v {
			s, ok := g.(string)
			if !ok {
				return nil, fmt.Errorf("the ID token's %q claim holds a %T, not a string", claim, g)
			}
			out = append(out, s)
		}
		return out, nil
	default:
		return nil, fmt.Errorf("the ID token's %q claim is a %T, not a list of strings", claim, v)
	}
}

// safeNext is where a sign-in may return to: a path on the console, never
// another site (//host, /\host or a scheme).
func safeNext(next string) string {
	u, err := url.Parse(next)
	if err != nil || next == "" || !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.Contains(next, `\`) ||
		u.Scheme != "" || u.Host != "" {
		return "/approvals"
	}
	return next
}

// clip bounds a string from outside for a message.
func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
