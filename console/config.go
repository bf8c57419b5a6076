package console

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Config is what the console needs from latch.yaml's oidc: and console:
// sections.
type Config struct {
	// URL is the console's public base URL (https://host:port), the root
	// of every link: the OIDC redirect and the links in notifications.
	URL string
	// Issuer is the OpenID Provider's issuer URL.
	Issuer string
	// ClientID and ClientSecret are latch's client at the provider.
	ClientID     string
	ClientSecret string
	// RedirectURL is where the provider sends people back; URL +
	// "/callback" when empty.
	RedirectURL string
	// Scopes asked for; "openid" is always among them.
	Scopes []string
	// GroupsClaim is the ID token claim that lists a person's groups.
	GroupsClaim string
	// Roots verify the provider's TLS certificate; nil: the system's.
	Roots *x509.CertPool

	// SessionLifetime bounds a session from sign-in; IdleTimeout ends
	// one unused for that long; StepUpAge is the oldest authentication
	// that may approve a critical request.
	SessionLifetime time.Duration
	IdleTimeout     time.Duration
	StepUpAge       time.Duration
	// TraceURL links a request's trace ID (api.TraceLink); optional.
	TraceURL string
	// SessionKeys sign (first 32 bytes) and encrypt (last 32) the
	// session cookies: 64 bytes, the same on every replica.
	SessionKeys []byte
}

// Defaults for the durations a config leaves out.
const (
	DefaultSessionLifetime = 8 * time.Hour
	DefaultIdleTimeout     = 30 * time.Minute
	DefaultStepUpAge       = 10 * time.Minute
)

// SessionKeySize is the size of Config.SessionKeys.
const SessionKeySize = 64

func (c *Config) check() error {
	var errs []error
	u, err := url.Parse(c.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") {
		errs = append(errs, fmt.Errorf("console url %q: want https://host[:port], the address people open", c.URL))
	}
	if iu, err := url.Parse(c.Issuer); err != nil || iu.Scheme != "https" || iu.Host == "" || iu.Fragment != "" {
		errs = append(errs, fmt.Errorf("oidc issuer %q: want an https URL without a fragment", c.Issuer))
	}
	if c.ClientID == "" || c.ClientSecret == "" {
		errs = append(errs, errors.New("oidc: client_id and client_secret_file are required"))
	}
	if len(c.SessionKeys) != SessionKeySize {
		errs = append(errs, fmt.Errorf("console session keys: %d bytes, want %d", len(c.SessionKeys), SessionKeySize))
	}
	if c.SessionLifetime <= 0 || c.IdleTimeout <= 0 || c.StepUpAge <= 0 {
		errs = append(errs, errors.New("console session_lifetime, idle_timeout and step_up_age must be positive"))
	}
	return errors.Join(errs...)
}

// base is URL without a trailing slash.
func (c *Config) base() string { return strings.TrimSuffix(c.URL, "/") }
