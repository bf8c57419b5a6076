package vault

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-cleanhttp"
	vaultapi "github.com/hashicorp/vault/api"

	"github.com/latchbroker/latch/broker"
)

// ErrNotLoggedIn is returned (wrapped in a retryable *Error) by calls made
// with latch's own token before a login has succeeded.
var ErrNotLoggedIn = errors.New("vault: not logged in")

// Client is latch's Vault client. It is safe for concurrent use.
type Client struct {
	cfg Config
	api *vaultapi.Client
	// transport is kept to close idle connections on Close.
	transport *http.Transport

	auth        atomic.Pointer[authState]
	authChanged chan struct{} // wakes Run when Login replaced the token
	loginMu     sync.Mutex    // one login at a time
	warnedEnd   atomic.Value  // accessor of the token whose end was last warned of
	stop        chan struct{}
	stopOnce    sync.Once
}

// authState is latch's current Vault token.
type authState struct {
	token    broker.Secret // {"token": ...}
	accessor string
	secret   *vaultapi.Secret // the login response, for the LifetimeWatcher
	at       time.Time        // when it was obtained
	// With a token file: when the token ends for good (Unix seconds, 0:
	// no known end; a renewal may learn it later), and the TTL it was
	// created with (tokenend.go).
	end     atomic.Int64
	fullTTL time.Duration
}

func (a *authState) value() string { return a.token.Reveal()["token"] }

// New validates cfg and builds a client. It does no I/O: call Login to
// authenticate and Run to keep the token alive.
func New(cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()

	tlsCfg := &tls.Config{
		// 1.2 for older Vault listeners; Go offers 1.3 first and uses it
		// whenever Vault supports it.
		MinVersion: tls.VersionTLS12,
		ServerName: cfg.TLSServerName,
	}
	if cfg.CACert != "" {
		pem, err := os.ReadFile(cfg.CACert)
		if err != nil {
			return nil, fmt.Errorf("vault: ca_cert: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("vault: ca_cert %s: no PEM certificates found", cfg.CACert)
		}
		tlsCfg.RootCAs = pool
	}
	tr := cleanhttp.DefaultPooledTransport()
	tr.TLSClientConfig = tlsCfg
	// Concurrent mints from many agents go to one host.
	tr.MaxIdleConnsPerHost = 64

	api, err := vaultapi.NewClient(&vaultapi.Config{
		Address: cfg.Address,
		// Deadlines come from contexts (per attempt and per call), so
		// the http.Client itself has none; retries are ours.
		HttpClient: &http.Client{Transport: tr},
		MaxRetries: 0,
		// Used only by the API's own helpers (the LifetimeWatcher's
		// renew-self); our calls carry their own deadlines.
		Timeout: cfg.Timeout,
	})
	if err != nil {
		return nil, fmt.Errorf("vault: %w", err)
	}
	// NewClient picks up VAULT_TOKEN, VAULT_NAMESPACE and VAULT_HEADERS
	// from the environment; latch's connection is its config alone.
	api.ClearToken()
	api.SetHeaders(http.Header{vaultapi.RequestHeaderName: []string{"true"}})
	if cfg.Namespace != "" {
		api.SetNamespace(cfg.Namespace)
	}
	return &Client{
		cfg:         cfg,
		api:         api,
		transport:   tr,
		authChanged: make(chan struct{}, 1),
		stop:        make(chan struct{}),
	}, nil
}

// Address is the Vault address the client talks to.
func (c *Client) Address() string { return c.cfg.Address }

// Owner is Config.Owner: the installation the shared objects it writes
// belong to.
func (c *Client) Owner() string { return c.cfg.Owner }

// Now returns the client's clock reading.
func (c *Client) Now() time.Time { return c.cfg.Now() }

// Accessor is the accessor of latch's current token, or "" before login.
func (c *Client) Accessor() string {
	if a := c.auth.Load(); a != nil {
		return a.accessor
	}
	return ""
}

// Close stops Run and closes idle connections.
func (c *Client) Close() {
	c.stopOnce.Do(func() { close(c.stop) })
	c.transport.CloseIdleConnections()
}

// Request is one Vault API call.
type Request struct {
	// Op names the operation for metrics and errors, such as
	// "token.create"; keep it low-cardinality (no IDs).
	Op string
	// Method is GET, PUT, POST or DELETE.
	Method string
	// Path is the API path without /v1/, such as "auth/token/create/latch".
	Path string
	// Data is the JSON body, if any: a map, or a struct where the call is
	// on the issue path (it encodes without sorting keys).
	Data any
	// Into, when set, receives the decoded body of a successful response
	// and Do returns a nil Secret: on the issue path a struct of the few
	// fields latch reads costs a fraction of decoding Vault's whole
	// response into a Secret.
	Into any
	// Token is the token to call with instead of latch's own, such as a
	// per-lease mint token ({"token": ...}). Zero means latch's token.
	Token broker.Secret
	// NoAuth sends no token at all (login endpoints).
	NoAuth bool
}

// Do performs r with retries and returns Vault's response, which is nil
// for 204 No Content. Errors are *Error; see the package documentation for
// which are retried.
func (c *Client) Do(ctx context.Context, r Request) (*vaultapi.Secret, error) {
	start := time.Now()
	s, err := c.do(ctx, r)
	c.cfg.Metrics.ObserveVaultCall(r.Op, Outcome(err), time.Since(start))
	return s, err
}

func (c *Client) do(ctx context.Context, r Request) (*vaultapi.Secret, error) {
	reloggedIn := false
	for attempt := 0; ; attempt++ {
		token, own, err := c.tokenFor(r)
		if err != nil {
			return nil, err
		}
		s, err := c.attempt(ctx, r, token)
		if err == nil {
			return s, nil
		}
		e := classify(r.Op, r.Path, err)
		// 403 on latch's own token: it may have been revoked or expired
		// under us. Log in again once (rate-limited) and retry.
		if e.Status == http.StatusForbidden && own != nil && !reloggedIn && c.reloginAllowed(own) {
			reloggedIn = true
			if lerr := c.relogin(ctx, own); lerr == nil {
				attempt--
				continue
			}
		}
		if !e.Retryable || attempt >= c.cfg.MaxRetries || ctx.Err() != nil {
			if ctx.Err() != nil && e.Err == nil {
				e.Err = ctx.Err()
			}
			return nil, e
		}
		if err := c.sleep(ctx, attempt); err != nil {
			// The call's deadline ends inside the backoff: report the
			// failure we have, which says what went wrong.
			return nil, e
		}
	}
}

// tokenFor picks the token for r; own is latch's login when the token is
// latch's own.
func (c *Client) tokenFor(r Request) (token string, own *authState, err error) {
	switch {
	case r.NoAuth:
		return "", nil, nil
	case !r.Token.IsZero():
		return r.Token.Reveal()["token"], nil, nil
	}
	a := c.auth.Load()
	if a == nil {
		return "", nil, &Error{Op: r.Op, Path: r.Path, Retryable: true, Err: ErrNotLoggedIn}
	}
	return a.value(), a, nil
}

func (c *Client) attempt(ctx context.Context, r Request, token string) (*vaultapi.Secret, error) {
	actx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	// A shallow copy of the API client whose requests carry this call's
	// token; the shared client never holds one, so concurrent calls with
	// different tokens cannot mix them up.
	api := c.api.WithRequestCallbacks(func(req *vaultapi.Request) { req.ClientToken = token })
	req := api.NewRequest(r.Method, "/v1/"+r.Path)
	if r.Data != nil {
		if err := req.SetJSONBody(r.Data); err != nil {
			return nil, err
		}
	}
	//lint:ignore SA1019 the one API call that takes a per-request token and any method
	resp, err := api.RawRequestWithContext(actx, req)
	if resp != nil {
		defer resp.Body.Close()
	}
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusNoContent {
		return nil, nil
	}
	if r.Into != nil {
		err := json.NewDecoder(resp.Body).Decode(r.Into)
		// Read to the end, so that the connection is reused.
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil, err
	}
	s, err := vaultapi.ParseSecret(resp.Body)
	if errors.Is(err, io.EOF) {
		return nil, nil
	}
	return s, err
}

// sleep waits the backoff before retry attempt+1: exponential from
// RetryWaitMin, capped at RetryWaitMax, with jitter over the upper half
// so that many goroutines (or brokers) retrying one Vault do not retry in
// step.
func (c *Client) sleep(ctx context.Context, attempt int) error {
	ceil := c.cfg.RetryWaitMin << min(attempt, 20)
	if ceil > c.cfg.RetryWaitMax || ceil <= 0 {
		ceil = c.cfg.RetryWaitMax
	}
	d := ceil/2 + rand.N(ceil/2+1)
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
		return context.DeadlineExceeded
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Read, Write and Delete are Do with latch's own token.
func (c *Client) Read(ctx context.Context, op, path string) (*vaultapi.Secret, error) {
	return c.Do(ctx, Request{Op: op, Method: http.MethodGet, Path: path})
}

// Write is a PUT with a JSON body.
func (c *Client) Write(ctx context.Context, op, path string, data map[string]any) (*vaultapi.Secret, error) {
	return c.Do(ctx, Request{Op: op, Method: http.MethodPut, Path: path, Data: data})
}

// Delete is a DELETE.
func (c *Client) Delete(ctx context.Context, op, path string) error {
	_, err := c.Do(ctx, Request{Op: op, Method: http.MethodDelete, Path: path})
	return err
}

// CleanPath checks a path rendered from a template or read from a lease
// record before it goes into a URL: Vault lease IDs and engine paths have
// slashes on purpose, so segments are kept, but empty, "." and ".."
// segments, query or fragment characters, escapes and control characters
// are refused — a rendered value cannot step outside its prefix.
func CleanPath(p string) (string, error) {
	if p == "" || strings.HasPrefix(p, "/") || strings.HasSuffix(p, "/") {
		return "", fmt.Errorf("vault: bad path %q", p)
	}
	for seg := range strings.SplitSeq(p, "/") {
		if seg == "" || seg == "." || seg == ".." || strings.ContainsAny(seg, "?#%\\") || strings.ContainsFunc(seg, isControl) {
			return "", fmt.Errorf("vault: bad path %q", p)
		}
	}
	return p, nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }
