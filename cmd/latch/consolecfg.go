package main

import (
	"cmp"
	"crypto/rand"
	"crypto/sha512"
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/latchbroker/latch/console"
	"github.com/latchbroker/latch/templates/strictyaml"
)

// OIDCConfig is oidc:, the OpenID Provider people sign in through.
type OIDCConfig struct {
	Issuer           string   `yaml:"issuer"`
	ClientID         string   `yaml:"client_id"`
	ClientSecretFile string   `yaml:"client_secret_file"`
	RedirectURL      string   `yaml:"redirect_url"` // default: console.url + /callback
	Scopes           []string `yaml:"scopes"`       // default: openid, email, profile
	GroupsClaim      string   `yaml:"groups_claim"` // default: groups
	CACert           string   `yaml:"ca_cert"`      // the provider's CA, when not a system root

	At       strictyaml.Pos `yaml:",pos"`
	IssuerAt strictyaml.Pos `yaml:"issuer,pos"`
}

// ConsoleConfig is console:, the web console's listener and sessions.
type ConsoleConfig struct {
	Listen  string `yaml:"listen"`
	URL     string `yaml:"url"` // public base URL: https://host:port
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	// SessionKeyFile holds a secret (32 bytes or more) from which the
	// session cookies' keys are derived; the same file on every replica.
	// Absent: random keys, and sessions end with the process.
	SessionKeyFile  string        `yaml:"session_key_file"`
	SessionLifetime time.Duration `yaml:"session_lifetime"`
	IdleTimeout     time.Duration `yaml:"idle_timeout"`
	StepUpMaxAge    time.Duration `yaml:"step_up_max_age"`

	At       strictyaml.Pos `yaml:",pos"`
	ListenAt strictyaml.Pos `yaml:"listen,pos"`
	URLAt    strictyaml.Pos `yaml:"url,pos"`
}

// validateConsole checks oidc: and console:, which go together.
func (c *Config) validateConsole(add func(p strictyaml.Pos, format string, args ...any)) {
	o, k := c.OIDC, c.Console
	switch {
	case o == nil && k == nil:
		return
	case o == nil:
		add(k.At, "console: needs an oidc: section (the OpenID Provider people sign in through)")
		return
	case k == nil:
		add(o.At, "oidc: needs a console: section (the web console people sign in to)")
		return
	}
	if u, err := url.Parse(o.Issuer); err != nil || u.Scheme != "https" || u.Host == "" || u.Fragment != "" {
		add(configOr(o.IssuerAt, o.At), "oidc.issuer: expected the provider's https URL, such as https://idp.example.org/, got %q", o.Issuer)
	}
	if o.ClientID == "" || o.ClientSecretFile == "" {
		add(o.At, "oidc: client_id and client_secret_file are required (latch's client at the provider)")
	}
	if _, port, err := net.SplitHostPort(k.Listen); err != nil || port == "" {
		add(configOr(k.ListenAt, k.At), "console.listen: expected host:port, such as 127.0.0.1:8444, got %q", k.Listen)
	} else if k.Listen == c.Server.Listen || k.Listen == c.Server.MetricsListen {
		add(k.ListenAt, "console.listen: must differ from server.listen and server.metrics_listen")
	}
	if u, err := url.Parse(k.URL); err != nil || u.Scheme != "https" || u.Host == "" || strings.TrimSuffix(u.Path, "/") != "" {
		add(configOr(k.URLAt, k.At), "console.url: expected the https address people open, such as https://latch.example.org:8444, got %q", k.URL)
	}
	if k.TLSCert == "" || k.TLSKey == "" {
		add(k.At, "console: tls_cert and tls_key are required (a certificate browsers trust for console.url's host)")
	}
	if k.SessionLifetime < 0 || k.IdleTimeout < 0 || k.StepUpMaxAge < 0 {
		add(k.At, "console: session_lifetime, idle_timeout and step_up_max_age must not be negative")
	}
}

func (c *Config) consolePaths() []*string {
	var ps []*string
	if o := c.OIDC; o != nil {
		ps = append(ps, &o.ClientSecretFile, &o.CACert)
	}
	if k := c.Console; k != nil {
		ps = append(ps, &k.TLSCert, &k.TLSKey, &k.SessionKeyFile)
	}
	return ps
}

// consoleConfig reads the files console: and oidc: name into the
// console's config.
func (c *Config) consoleConfig() (console.Config, bool, error) {
	o, k := c.OIDC, c.Console
	if o == nil || k == nil {
		return console.Config{}, false, nil
	}
	secret, err := os.ReadFile(o.ClientSecretFile)
	if err != nil {
		return console.Config{}, true, fmt.Errorf("oidc.client_secret_file: %w", err)
	}
	cc := console.Config{URL: k.URL, Issuer: o.Issuer, ClientID: o.ClientID, ClientSecret: strings.TrimSpace(string(secret)),
		RedirectURL: o.RedirectURL, Scopes: o.Scopes, GroupsClaim: cmp.Or(o.GroupsClaim, "groups"),
		SessionLifetime: cmp.Or(k.SessionLifetime, console.DefaultSessionLifetime),
		IdleTimeout:     cmp.Or(k.IdleTimeout, console.DefaultIdleTimeout),
		StepUpAge:       cmp.Or(k.StepUpMaxAge, console.DefaultStepUpAge),
		TraceURL:        c.Telemetry.TraceURL}
	if len(cc.Scopes) == 0 {
		cc.Scopes = []string{"openid", "email", "profile"}
	}
	if o.CACert != "" {
		pem, err := os.ReadFile(o.CACert)
		if err != nil {
			return cc, true, fmt.Errorf("oidc.ca_cert: %w", err)
		}
		cc.Roots = x509.NewCertPool()
		if !cc.Roots.AppendCertsFromPEM(pem) {
			return cc, true, fmt.Errorf("oidc.ca_cert: %s holds no PEM certificate", o.CACert)
		}
	}
	cc.SessionKeys, err = sessionKeys(k.SessionKeyFile)
	return cc, true, err
}

// sessionKeys derives the session cookies' keys from the secret in path
// (SHA-512: 32 bytes to sign, 32 to encrypt), or makes random ones.
func sessionKeys(path string) ([]byte, error) {
	if path == "" {
		k := make([]byte, console.SessionKeySize)
		rand.Read(k)
		return k, nil
	}
	secret, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("console.session_key_file: %w", err)
	}
	if len(strings.TrimSpace(string(secret))) < 32 {
		return nil, fmt.Errorf("console.session_key_file: %s holds fewer than 32 bytes; write a random secret, such as: head -c 48 /dev/urandom | base64 > %s",
			path, filepath.Base(path))
	}
	sum := sha512.Sum512(secret)
	return sum[:], nil
}
