package vault

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/latchbroker/latch/broker"
)

// minReloginInterval rate-limits re-logins triggered by 403 answers, so a
// policy that really denies something does not turn every call into a
// login. A variable for tests.
var minReloginInterval = 10 * time.Second

// Login authenticates latch with the configured method and makes the new
// token the one every call uses. Call it once at start to fail fast on bad
// credentials; Run calls it again whenever renewal ends.
func (c *Client) Login(ctx context.Context) error {
	c.loginMu.Lock()
	defer c.loginMu.Unlock()
	return c.loginLocked(ctx)
}

// relogin logs in again unless the token seen by the caller was already
// replaced (by a concurrent relogin or by Run).
func (c *Client) relogin(ctx context.Context, seen *authState) error {
	c.loginMu.Lock()
	defer c.loginMu.Unlock()
	if cur := c.auth.Load(); cur != seen {
		return nil
	}
	return c.loginLocked(ctx)
}

func (c *Client) reloginAllowed(a *authState) bool {
	return time.Since(a.at) >= minReloginInterval
}

func (c *Client) loginLocked(ctx context.Context) error {
	var (
		s   *vaultapi.Secret
		err error
	)
	switch c.cfg.Auth.Method {
	case AuthToken:
		s, err = c.loginToken(ctx)
	case AuthAppRole:
		s, err = c.loginAppRole(ctx)
	case AuthJWT:
		s, err = c.loginJWT(ctx)
	default:
		err = fmt.Errorf("unknown auth method %q", c.cfg.Auth.Method)
	}
	if err != nil {
		return fmt.Errorf("vault: log in (%s): %w", c.cfg.Auth.Method, err)
	}
	if s == nil || s.Auth == nil || s.Auth.ClientToken == "" {
		return fmt.Errorf("vault: log in (%s): Vault returned no token", c.cfg.Auth.Method)
	}
	a := &authState{
		token:    broker.NewSecret(map[string]string{"token": s.Auth.ClientToken}),
		accessor: s.Auth.Accessor,
		secret:   s,
		at:       time.Now(),
	}
	if c.cfg.Auth.Method == AuthToken {
		end, fullTTL := tokenEnd(s.Data, c.cfg.Now())
		if old := c.auth.Load(); old != nil && old.accessor == a.accessor && end.IsZero() {
			end = old.endTime() // the file still holds it: what a renewal told stays true
		}
		a.setEnd(end)
		a.fullTTL = fullTTL
	}
	c.auth.Store(a)
	select {
	case c.authChanged <- struct{}{}:
	default:
	}
	c.cfg.Logger.Info("vault: logged in", "method", c.cfg.Auth.Method, "accessor", a.accessor,
		"ttl", time.Duration(s.Auth.LeaseDuration)*time.Second, "renewable", s.Auth.Renewable)
	c.noteEnd(a)
	return nil
}

func readCredentialFile(what, path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		return "", fmt.Errorf("%s: %s is empty", what, path)
	}
	return v, nil
}

// loginToken reads the token file and looks the token up, to learn its TTL
// and renewability for the LifetimeWatcher, and its end (tokenEnd).
func (c *Client) loginToken(ctx context.Context) (*vaultapi.Secret, error) {
	tok, err := readCredentialFile("token_file", c.cfg.Auth.TokenFile)
	if err != nil {
		return nil, err
	}
	s, err := c.Do(ctx, Request{
		Op: "auth.lookup-self", Method: http.MethodGet, Path: "auth/token/lookup-self",
		Token: broker.NewSecret(map[string]string{"token": tok}),
	})
	if err != nil {
		return nil, err
	}
	if s == nil {
		return nil, errors.New("token lookup returned nothing")
	}
	ttl, err := s.TokenTTL()
	if err != nil {
		return nil, fmt.Errorf("token lookup: %w", err)
	}
	renewable, _ := s.TokenIsRenewable()
	accessor, _ := s.TokenAccessor()
	return &vaultapi.Secret{Data: s.Data, Auth: &vaultapi.SecretAuth{
		ClientToken:   tok,
		Accessor:      accessor,
		LeaseDuration: int(ttl.Seconds()),
		Renewable:     renewable,
	}}, nil
}

func (c *Client) loginAppRole(ctx context.Context) (*vaultapi.Secret, error) {
	roleID, err := readCredentialFile("role_id_file", c.cfg.Auth.RoleIDFile)
	if err != nil {
		return nil, err
	}
	secretID, err := readCredentialFile("secret_id_file", c.cfg.Auth.SecretIDFile)
	if err != nil {
		return nil, err
	}
	return c.Do(ctx, Request{
		Op: "auth.login", Method: http.MethodPut, Path: "auth/" + c.cfg.Auth.Mount + "/login", NoAuth: true,
		Data: map[string]any{"role_id": roleID, "secret_id": secretID},
	})
}

func (c *Client) loginJWT(ctx context.Context) (*vaultapi.Secret, error) {
	jwt, err := c.cfg.Auth.JWT(ctx)
	if err != nil {
		return nil, fmt.Errorf("get JWT-SVID: %w", err)
	}
	return c.Do(ctx, Request{
		Op: "auth.login", Method: http.MethodPut, Path: "auth/" + c.cfg.Auth.Mount + "/login", NoAuth: true,
		Data: map[string]any{"role": c.cfg.Auth.Role, "jwt": jwt},
	})
}

// Run keeps latch's token alive until ctx ends or Close is called: it
// renews the token with Vault's LifetimeWatcher and, when renewal ends (the
// token reached its max TTL, stopped being renewable, or was revoked), logs
// in again, retrying with backoff while Vault is unreachable. If no login
// has succeeded yet, Run starts by logging in. It returns nil when stopped.
func (c *Client) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-c.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	failures := 0
	for ctx.Err() == nil {
		a := c.auth.Load()
		if a == nil {
			if err := c.Login(ctx); err != nil {
				failures++
				c.cfg.Logger.Warn("vault: login failed; retrying", "error", err, "attempt", failures)
				c.pause(ctx, failures)
				continue
			}
			failures = 0
			continue
		}
		if !c.watch(ctx, a) {
			continue // stopped, or the token was replaced
		}
		if err := c.relogin(ctx, a); err != nil {
			failures++
			c.cfg.Logger.Warn("vault: login after renewal ended failed; retrying", "error", err, "attempt", failures)
			c.pause(ctx, failures)
			continue
		}
		if b := c.auth.Load(); b != a && b.accessor == a.accessor {
			// The token file still holds the same token: wait for
			// whoever rotates it instead of spinning.
			failures++
			c.pause(ctx, failures)
			continue
		}
		failures = 0
	}
	return nil
}

// watch renews a until renewal ends (true), or until ctx ends or another
// login replaces a (false). With a token file, it also reads the file
// every TokenFileCheck and logs in with a new token found there.
func (c *Client) watch(ctx context.Context, a *authState) bool {
	select {
	case <-c.authChanged: // stale signal from the login that produced a
	default:
	}
	if c.auth.Load() != a {
		return false
	}
	var fileCheck <-chan time.Time
	if c.cfg.Auth.Method == AuthToken {
		t := time.NewTicker(c.cfg.Auth.TokenFileCheck)
		defer t.Stop()
		fileCheck = t.C
	}
	var renewed <-chan *vaultapi.RenewOutput
	var ended <-chan error
	if a.secret.Auth.LeaseDuration > 0 {
		w, err := c.api.NewLifetimeWatcher(&vaultapi.LifetimeWatcherInput{Secret: a.secret})
		if err != nil {
			c.cfg.Logger.Error("vault: cannot watch token", "error", err)
			return true
		}
		go w.Start()
		defer w.Stop()
		renewed, ended = w.RenewCh(), w.DoneCh()
	} // else a non-expiring token (a root token, or one without TTL) needs no renewal
	for {
		select {
		case <-ctx.Done():
			return false
		case <-c.authChanged:
			if c.auth.Load() != a {
				return false
			}
		case <-fileCheck:
			if c.tokenFileChanged(a) {
				if err := c.relogin(ctx, a); err != nil {
					c.cfg.Logger.Warn("vault: token_file holds a new token latch cannot log in with; keeping the old one", "error", err)
				}
			}
		case err := <-ended:
			if err != nil {
				c.cfg.Logger.Warn("vault: token renewal failed; logging in again", "error", err, "accessor", a.accessor)
			} else {
				c.cfg.Logger.Info("vault: token renewal ended; logging in again", "accessor", a.accessor)
			}
			return true
		case r := <-renewed:
			c.renewed(a, r)
		}
	}
}

// renewed notes a renewal of a. With a token file, a renewal that comes
// back shorter than the token's full TTL has met the token's max TTL:
// its end is known now. Vault renews an uncapped token to exactly its
// full TTL, and counts a capped one from its creation second, so even one
// second short is the cap (a 4s token of a 5s max renews to 3s at once).
func (c *Client) renewed(a *authState, r *vaultapi.RenewOutput) {
	if r == nil || r.Secret == nil || r.Secret.Auth == nil {
		return
	}
	ttl := time.Duration(r.Secret.Auth.LeaseDuration) * time.Second
	c.cfg.Logger.Debug("vault: token renewed", "accessor", a.accessor, "ttl", ttl)
	if c.cfg.Auth.Method == AuthToken && a.endTime().IsZero() && ttl < a.fullTTL {
		a.setEnd(c.cfg.Now().Add(ttl))
		c.noteEnd(a)
	}
}

// pause waits 1s, 2s, 4s ... up to 30s, with jitter, or until ctx ends.
func (c *Client) pause(ctx context.Context, failures int) {
	d := min(time.Second<<min(failures-1, 5), 30*time.Second)
	d = d/2 + rand.N(d/2+1)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
