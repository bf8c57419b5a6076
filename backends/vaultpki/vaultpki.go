package vaultpki

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/latchbroker/latch/backends/vault"
	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/templates"
)

// Type is the backend type in latch's config.
const Type = templates.BackendVaultPKI

// notAfterSlack is how far past now + TTL a certificate's NotAfter may lie
// before Mint refuses it (clock skew between latch and Vault).
const notAfterSlack = time.Minute

// Config is the backend's block in latch's config (all but type).
type Config struct {
	// Mount is the PKI secrets engine's mount path, such as pki.
	Mount string `yaml:"mount"`
	// Role is the PKI role certificates are issued from.
	Role string `yaml:"role"`
	// TokenRole is the token role mint tokens are created through;
	// default latch-mint.
	TokenRole string `yaml:"token_role"`
}

// Validate names the bad key.
func (c Config) Validate() error {
	var errs []error
	if c.Mount == "" {
		errs = append(errs, errors.New("vaultpki: mount is required, such as pki"))
	} else if err := vault.CheckMount("mount", c.Mount); err != nil {
		errs = append(errs, fmt.Errorf("vaultpki: %w", err))
	}
	if c.Role == "" {
		errs = append(errs, errors.New("vaultpki: role is required: the PKI role to issue from"))
	} else if err := vault.CheckName("role", c.Role); err != nil {
		errs = append(errs, fmt.Errorf("vaultpki: %w", err))
	}
	if c.TokenRole != "" {
		if err := vault.CheckName("token_role", c.TokenRole); err != nil {
			errs = append(errs, fmt.Errorf("vaultpki: %w", err))
		}
	}
	return errors.Join(errs...)
}

func (c Config) withDefaults() Config {
	if c.TokenRole == "" {
		c.TokenRole = vault.DefaultMintTokenRole
	}
	return c
}

// Backend is the vault-pki backend.
type Backend struct {
	c   *vault.Client
	cfg Config
}

var (
	_ broker.Backend  = (*Backend)(nil)
	_ broker.Preparer = (*Backend)(nil)
)

// New returns the backend, which issues through c.
func New(c *vault.Client, cfg Config) (*Backend, error) {
	if c == nil {
		return nil, errors.New("vaultpki: no Vault client")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Backend{c: c, cfg: cfg.withDefaults()}, nil
}

// validate checks the request and its rendered names, as Evaluate
// already did (RenderCheck): this is the second line, for a caller that
// skipped it.
func validate(req broker.MintRequest) error {
	if err := req.Validate(); err != nil {
		return fmt.Errorf("vaultpki: %w", err)
	}
	n := req.Names
	if err := CheckNames(n.CommonName, n.AltNames, n.URISANs, n.IPSANs); err != nil {
		return fmt.Errorf("vaultpki: %w: task %s: %v", broker.ErrInvalidMintRequest, req.Task, err)
	}
	return nil
}

// Prepare creates the lease's mint token (see vault.PrepareMintToken).
func (b *Backend) Prepare(ctx context.Context, req broker.MintRequest) (broker.Prepared, error) {
	if err := validate(req); err != nil {
		return broker.Prepared{}, err
	}
	p, err := b.c.PrepareMintToken(ctx, b.cfg.TokenRole, req)
	if err != nil {
		return broker.Prepared{}, fmt.Errorf("vaultpki: %w", err)
	}
	return p, nil
}

// Mint issues the certificate under the lease's mint token. The secret's
// fields are certificate, private_key, private_key_type, issuing_ca and
// ca_chain (PEM, newline-joined).
func (b *Backend) Mint(ctx context.Context, req broker.MintRequest) (broker.Minted, error) {
	if err := validate(req); err != nil {
		return broker.Minted{}, err
	}
	prep := req.Prepared
	if prep.Credential.IsZero() {
		var err error
		if prep, err = b.Prepare(ctx, req); err != nil {
			return broker.Minted{}, err
		}
	}
	n := req.Names
	data := map[string]any{
		"common_name": n.CommonName,
		"ttl":         vault.Seconds(req.TTL),
		"format":      "pem",
	}
	if len(n.AltNames) > 0 {
		data["alt_names"] = strings.Join(n.AltNames, ",")
	}
	if len(n.URISANs) > 0 {
		data["uri_sans"] = strings.Join(n.URISANs, ",")
	}
	if len(n.IPSANs) > 0 {
		data["ip_sans"] = strings.Join(n.IPSANs, ",")
	}
	path := b.cfg.Mount + "/issue/" + b.cfg.Role
	s, err := b.c.Do(ctx, vault.Request{Op: "pki.issue", Method: http.MethodPut, Path: path, Data: data, Token: prep.Credential})
	var m broker.Minted
	if err == nil {
		m, err = b.minted(req, prep, s)
	}
	if err != nil {
		// The certificate, if Vault issued one, and the mint token.
		refs := broker.Refs{Serial: m.Refs.Serial, MintAccessor: prep.Refs.MintAccessor}
		vault.Cleanup(ctx, err, func(ctx context.Context) error { return b.Revoke(ctx, refs) })
		return broker.Minted{}, fmt.Errorf("vaultpki: issue from %s for lease %s: %w", path, req.LeaseID, err)
	}
	return m, nil
}

func (b *Backend) minted(req broker.MintRequest, prep broker.Prepared, s *vaultapi.Secret) (broker.Minted, error) {
	if s == nil || s.Data == nil {
		return broker.Minted{}, errors.New("Vault returned no certificate")
	}
	str := func(k string) string { v, _ := s.Data[k].(string); return v }
	certPEM, serial := str("certificate"), str("serial_number")
	refs := broker.Refs{Serial: serial, VaultLeaseID: s.LeaseID, MintAccessor: prep.Refs.MintAccessor}
	if certPEM == "" || serial == "" || str("private_key") == "" {
		return broker.Minted{Refs: refs}, errors.New("Vault's answer lacks the certificate, serial or private key")
	}
	block, _ := pem.Decode([]byte(certPEM))
	if block == nil {
		return broker.Minted{Refs: refs}, errors.New("Vault's certificate is not PEM")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return broker.Minted{Refs: refs}, fmt.Errorf("parse Vault's certificate: %w", err)
	}
	now := b.c.Now()
	if limit := now.Add(req.TTL + notAfterSlack); cert.NotAfter.After(limit) {
		return broker.Minted{Refs: refs}, fmt.Errorf("certificate %s is valid until %s, past the lease TTL (%s)", serial, cert.NotAfter.UTC().Format(time.RFC3339), req.TTL)
	}
	var chain []string
	if list, ok := s.Data["ca_chain"].([]any); ok {
		for _, c := range list {
			if c, ok := c.(string); ok {
				chain = append(chain, strings.TrimSpace(c))
			}
		}
	}
	fields := map[string]string{
		"certificate":      certPEM,
		"private_key":      str("private_key"),
		"private_key_type": str("private_key_type"),
		"issuing_ca":       str("issuing_ca"),
		"ca_chain":         strings.Join(chain, "\n"),
	}
	return broker.Minted{
		Secret:    broker.NewSecret(fields),
		Refs:      refs,
		ExpiresAt: cert.NotAfter,
		Renewable: false,
	}, nil
}

// Revoke revokes the certificate by serial (it is on the CRL when Revoke
// returns), then the mint token, which also revokes the certificate's Vault
// lease if the role generates leases. An already revoked or expired
// certificate counts as revoked. A serial Vault does not know is a
// permanent error: it cannot be revoked, only wait for its expiry.
func (b *Backend) Revoke(ctx context.Context, refs broker.Refs) error {
	if refs.Serial == "" && refs.MintAccessor == "" {
		return errors.New("vaultpki: revoke: refs name neither a certificate nor a mint token")
	}
	var errs []error
	if refs.Serial != "" {
		if _, err := b.c.Write(ctx, "pki.revoke", b.cfg.Mount+"/revoke", map[string]any{"serial_number": refs.Serial}); err != nil {
			errs = append(errs, fmt.Errorf("vaultpki: revoke certificate %s: %w", refs.Serial, err))
		}
	}
	if refs.MintAccessor != "" {
		if err := b.c.RevokeAccessor(ctx, refs.MintAccessor); err != nil {
			errs = append(errs, fmt.Errorf("vaultpki: revoke mint token %s: %w", refs.MintAccessor, err))
		}
	}
	return errors.Join(errs...)
}

// Lookup reports whether the certificate is still valid (neither revoked
// nor expired), or else whether the mint token still exists.
func (b *Backend) Lookup(ctx context.Context, refs broker.Refs) (bool, error) {
	if refs.Serial != "" {
		alive, err := b.certAlive(ctx, refs.Serial)
		if err != nil || alive {
			return alive, err
		}
	}
	if refs.MintAccessor != "" {
		alive, err := b.c.LookupAccessor(ctx, refs.MintAccessor)
		if err != nil {
			return false, fmt.Errorf("vaultpki: look up mint token %s: %w", refs.MintAccessor, err)
		}
		return alive, nil
	}
	return false, nil
}

func (b *Backend) certAlive(ctx context.Context, serial string) (bool, error) {
	if _, err := vault.CleanPath(serial); err != nil || strings.Contains(serial, "/") {
		return false, fmt.Errorf("vaultpki: bad serial %q", serial)
	}
	s, err := b.c.Read(ctx, "pki.read-cert", b.cfg.Mount+"/cert/"+serial)
	switch {
	case vault.StatusOf(err) == http.StatusNotFound:
		return false, nil
	case err != nil:
		return false, fmt.Errorf("vaultpki: look up certificate %s: %w", serial, err)
	case s == nil || s.Data == nil:
		return false, nil
	}
	if rt, ok := s.Data["revocation_time"].(json.Number); ok {
		if n, _ := rt.Int64(); n > 0 {
			return false, nil
		}
	}
	certPEM, _ := s.Data["certificate"].(string)
	block, _ := pem.Decode([]byte(certPEM))
	if block == nil {
		return false, fmt.Errorf("vaultpki: look up certificate %s: Vault returned no PEM certificate", serial)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return false, fmt.Errorf("vaultpki: look up certificate %s: %w", serial, err)
	}
	return b.c.Now().Before(cert.NotAfter), nil
}
