package vault

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"
)

// Auth methods latch logs in to Vault with.
const (
	AuthToken   = "token"   // a token read from TokenFile (Vault Agent, or an operator)
	AuthAppRole = "approle" // RoleIDFile + SecretIDFile
	AuthJWT     = "jwt"     // latch's own JWT-SVID, against Role
)

// Defaults for zero Config fields.
const (
	DefaultTimeout      = 10 * time.Second
	DefaultMaxRetries   = 2
	DefaultRetryWaitMin = 100 * time.Millisecond
	DefaultRetryWaitMax = 2 * time.Second
	// DefaultTokenFileCheck is how often a token file is read for a
	// rotated token.
	DefaultTokenFileCheck = time.Minute
)

// JWTSource returns a fresh JWT for Vault's JWT auth: latch's own JWT-SVID
// with the audience the Vault role expects. It is called on every login.
type JWTSource func(ctx context.Context) (string, error)

// Config is latch's connection to Vault. Zero durations take the defaults
// above.
type Config struct {
	// Address is Vault's URL, such as https://vault.internal:8200.
	Address string
	// CACert is a PEM file with the CA certificates that verify Vault's
	// TLS certificate; empty means the system roots.
	CACert string
	// TLSServerName overrides the name checked in Vault's certificate.
	TLSServerName string
	// Namespace is the Vault Enterprise namespace, if any.
	Namespace string
	// Owner names this latch installation (latch server sets its SPIFFE
	// ID): objects shared among leases, such as vault-token's policies,
	// carry a tag of it, so that latches sharing one Vault never collect
	// each other's.
	Owner string

	// Timeout bounds each attempt of each call (the caller's context
	// bounds the call as a whole).
	Timeout time.Duration
	// MaxRetries is how many times a retryable failure is retried; a
	// negative value disables retries.
	MaxRetries int
	// RetryWaitMin and RetryWaitMax bound the backoff between attempts.
	RetryWaitMin, RetryWaitMax time.Duration

	Auth AuthConfig

	// Metrics receives one observation per call; nil discards them.
	Metrics Metrics
	// Logger gets login and renewal events (never a token); nil discards.
	Logger *slog.Logger
	// Now is the clock used for expiry times; nil means time.Now.
	Now func() time.Time
}

// AuthConfig is how latch logs in to Vault.
type AuthConfig struct {
	// Method is AuthToken, AuthAppRole or AuthJWT.
	Method string
	// TokenFile holds latch's token (method token). It is read again on
	// every re-login and every TokenFileCheck, so an external agent (or
	// an operator) may rotate it.
	TokenFile string
	// TokenFileCheck is how often Run reads TokenFile for a new token;
	// zero means DefaultTokenFileCheck.
	TokenFileCheck time.Duration
	// RoleIDFile and SecretIDFile hold the AppRole credentials (method
	// approle), read on every login.
	RoleIDFile, SecretIDFile string
	// Role is the Vault JWT auth role (method jwt).
	Role string
	// JWT supplies latch's JWT-SVID (method jwt).
	JWT JWTSource
	// Mount is the auth method's mount path; it defaults to the method
	// name (approle, jwt).
	Mount string
}

// Validate reports every problem with the config, naming the field.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Address == "" {
		bad("vault: address is required, such as https://127.0.0.1:8200")
	} else if u, err := url.Parse(c.Address); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("vault: address: expected an http(s) URL, got %q", c.Address)
	}
	if c.Timeout < 0 {
		bad("vault: timeout must not be negative, got %s", c.Timeout)
	}
	if c.RetryWaitMin < 0 || c.RetryWaitMax < 0 || (c.RetryWaitMax > 0 && c.RetryWaitMin > c.RetryWaitMax) {
		bad("vault: retry waits must satisfy 0 <= min <= max, got %s and %s", c.RetryWaitMin, c.RetryWaitMax)
	}
	a := c.Auth
	need := func(field, value string) {
		if value == "" {
			bad("vault: auth.%s is required with method %s", field, a.Method)
		}
	}
	unused := func(field, value string) {
		if value != "" {
			bad("vault: auth.%s is not used by method %s", field, a.Method)
		}
	}
	switch a.Method {
	case AuthToken:
		need("token_file", a.TokenFile)
		unused("role_id_file", a.RoleIDFile)
		unused("secret_id_file", a.SecretIDFile)
		unused("role", a.Role)
		unused("mount", a.Mount)
	case AuthAppRole:
		need("role_id_file", a.RoleIDFile)
		need("secret_id_file", a.SecretIDFile)
		unused("token_file", a.TokenFile)
		unused("role", a.Role)
	case AuthJWT:
		need("role", a.Role)
		if a.JWT == nil {
			bad("vault: auth method jwt needs a JWT source (latch's JWT-SVID)")
		}
		unused("token_file", a.TokenFile)
		unused("role_id_file", a.RoleIDFile)
		unused("secret_id_file", a.SecretIDFile)
	case "":
		bad("vault: auth.method is required; allowed: token, approle, jwt")
	default:
		bad("vault: auth.method: unknown method %q; allowed: token, approle, jwt", a.Method)
	}
	if strings.Trim(a.Mount, "/") != a.Mount {
		bad("vault: auth.mount %q must not start or end with /", a.Mount)
	}
	return errors.Join(errs...)
}

func (c Config) withDefaults() Config {
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.MaxRetries == 0 {
		c.MaxRetries = DefaultMaxRetries
	}
	if c.MaxRetries < 0 {
		c.MaxRetries = 0
	}
	if c.RetryWaitMin == 0 {
		c.RetryWaitMin = DefaultRetryWaitMin
	}
	if c.RetryWaitMax == 0 {
		c.RetryWaitMax = max(DefaultRetryWaitMax, c.RetryWaitMin)
	}
	if c.Metrics == nil {
		c.Metrics = nopMetrics{}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Auth.Mount == "" {
		c.Auth.Mount = c.Auth.Method
	}
	if c.Auth.TokenFileCheck == 0 {
		c.Auth.TokenFileCheck = DefaultTokenFileCheck
	}
	return c
}
