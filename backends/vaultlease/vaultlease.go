package vaultlease

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/latchbroker/latch/backends/vault"
	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/templates"
)

// Type is the backend type in latch's config.
const Type = templates.BackendVaultLease

// Config is the backend's block in latch's config (all but type).
type Config struct {
	// Path is the engine path template, such as
	// "database/creds/{{ .vars.role }}". templates renders it per
	// request; the backend checks every rendered path against its static
	// prefix.
	Path string `yaml:"path"`
	// TokenRole is the token role mint tokens are created through;
	// default latch-mint.
	TokenRole string `yaml:"token_role"`
}

// Validate names the bad key.
func (c Config) Validate() error {
	var errs []error
	if c.Path == "" {
		errs = append(errs, errors.New("vaultlease: path is required, such as database/creds/{{ .vars.role }}"))
	} else {
		prefix := c.Prefix()
		switch {
		case prefix == "":
			errs = append(errs, fmt.Errorf("vaultlease: path %q must start with a fixed engine path, such as database/creds/", c.Path))
		case strings.HasPrefix(prefix, "/"):
			errs = append(errs, fmt.Errorf("vaultlease: path %q must not start with /", c.Path))
		case strings.HasPrefix(prefix, "sys/") || strings.HasPrefix(prefix, "auth/") || strings.HasPrefix(prefix, "identity/") || strings.HasPrefix(prefix, "cubbyhole/"):
			errs = append(errs, fmt.Errorf("vaultlease: path %q is not a secrets engine path", c.Path))
		case !strings.Contains(c.Path, "{{") && func() bool { _, err := vault.CleanPath(c.Path); return err != nil }():
			errs = append(errs, fmt.Errorf("vaultlease: path %q is not a clean Vault path", c.Path))
		default:
			if _, err := templateSegments(c.Path); err != nil {
				errs = append(errs, fmt.Errorf("vaultlease: %w", err))
			}
		}
	}
	if c.TokenRole != "" {
		if err := vault.CheckName("token_role", c.TokenRole); err != nil {
			errs = append(errs, fmt.Errorf("vaultlease: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Prefix is the path template's static part, up to the last slash before
// its first action: every rendered path must start with it.
func (c Config) Prefix() string {
	p := c.Path
	if i := strings.Index(p, "{{"); i >= 0 {
		p = p[:i]
		p = p[:strings.LastIndex(p, "/")+1]
	}
	return p
}

func (c Config) withDefaults() Config {
	if c.TokenRole == "" {
		c.TokenRole = vault.DefaultMintTokenRole
	}
	return c
}

// Backend is the vault-lease backend.
type Backend struct {
	c     *vault.Client
	cfg   Config
	check RenderCheck
}

var (
	_ broker.Backend  = (*Backend)(nil)
	_ broker.Preparer = (*Backend)(nil)
	_ broker.Renewer  = (*Backend)(nil)
)

// New returns the backend, which mints through c.
func New(c *vault.Client, cfg Config) (*Backend, error) {
	if c == nil {
		return nil, errors.New("vaultlease: no Vault client")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Backend{c: c, cfg: cfg.withDefaults(), check: cfg.RenderCheck()}, nil
}

// path checks the request and its rendered path, as Evaluate already did
// (RenderCheck): this is the second line, for a caller that skipped it.
func (b *Backend) path(req broker.MintRequest) (string, error) {
	if err := req.Validate(); err != nil {
		return "", fmt.Errorf("vaultlease: %w", err)
	}
	if err := b.check.Check(req.Path); err != nil {
		return "", fmt.Errorf("vaultlease: %w: task %s: %v", broker.ErrInvalidMintRequest, req.Task, err)
	}
	return req.Path, nil
}

// Prepare creates the lease's mint token (see vault.PrepareMintToken).
func (b *Backend) Prepare(ctx context.Context, req broker.MintRequest) (broker.Prepared, error) {
	if _, err := b.path(req); err != nil {
		return broker.Prepared{}, err
	}
	p, err := b.c.PrepareMintToken(ctx, b.cfg.TokenRole, req)
	if err != nil {
		return broker.Prepared{}, fmt.Errorf("vaultlease: %w", err)
	}
	return p, nil
}

// Mint reads the rendered path under the lease's mint token. Without
// req.Prepared it prepares first. On failure the mint token is revoked
// (best effort), which takes anything read with it along.
func (b *Backend) Mint(ctx context.Context, req broker.MintRequest) (broker.Minted, error) {
	path, err := b.path(req)
	if err != nil {
		return broker.Minted{}, err
	}
	prep := req.Prepared
	if prep.Credential.IsZero() {
		if prep, err = b.Prepare(ctx, req); err != nil {
			return broker.Minted{}, err
		}
	}
	undo := func(ctx context.Context) error { return b.c.RevokeAccessor(ctx, prep.Refs.MintAccessor) }

	s, err := b.c.Do(ctx, vault.Request{Op: "lease.read", Method: http.MethodGet, Path: path, Token: prep.Credential})
	if err == nil && (s == nil || s.LeaseID == "") {
		err = &vault.Error{Op: "lease.read", Path: path, Messages: []string{
			"Vault returned no lease: vault-lease needs a path that issues leases (database/creds/..., aws/creds/...)"}}
	}
	if err != nil {
		vault.Cleanup(ctx, err, undo)
		return broker.Minted{}, fmt.Errorf("vaultlease: read %s for lease %s: %w", path, req.LeaseID, err)
	}

	fields := make(map[string]string, len(s.Data))
	for k, v := range s.Data {
		fields[k] = stringify(v)
	}
	now := b.c.Now()
	expires := now.Add(req.TTL)
	if d := time.Duration(s.LeaseDuration) * time.Second; d > 0 && now.Add(d).Before(expires) {
		expires = now.Add(d)
	}
	return broker.Minted{
		Secret:    broker.NewSecret(fields),
		Refs:      broker.Refs{VaultLeaseID: s.LeaseID, MintAccessor: prep.Refs.MintAccessor},
		ExpiresAt: expires,
		Renewable: s.Renewable && req.EffectiveMaxTTL() > req.TTL,
	}, nil
}

// stringify keeps strings as they are and writes anything else (numbers,
// lists, objects some engines return) as JSON.
func stringify(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

// Revoke revokes the Vault lease (synchronously: the engine has destroyed
// the secret when it returns), then the mint token; the token is revoked
// even if the lease revocation failed, since that revokes the lease too.
// Gone objects count as revoked.
func (b *Backend) Revoke(ctx context.Context, refs broker.Refs) error {
	if refs.VaultLeaseID == "" && refs.MintAccessor == "" {
		return errors.New("vaultlease: revoke: refs name neither a Vault lease nor a mint token")
	}
	var errs []error
	if refs.VaultLeaseID != "" {
		if err := b.c.RevokeLease(ctx, refs.VaultLeaseID); err != nil {
			errs = append(errs, fmt.Errorf("vaultlease: revoke lease %s: %w", refs.VaultLeaseID, err))
		}
	}
	if refs.MintAccessor != "" {
		if err := b.c.RevokeAccessor(ctx, refs.MintAccessor); err != nil {
			errs = append(errs, fmt.Errorf("vaultlease: revoke mint token %s: %w", refs.MintAccessor, err))
		}
	}
	return errors.Join(errs...)
}

// Lookup reports whether the Vault lease, or else the mint token, still
// exists.
func (b *Backend) Lookup(ctx context.Context, refs broker.Refs) (bool, error) {
	if refs.VaultLeaseID != "" {
		alive, _, err := b.c.LookupLease(ctx, refs.VaultLeaseID)
		if err != nil {
			return false, fmt.Errorf("vaultlease: look up lease %s: %w", refs.VaultLeaseID, err)
		}
		if alive {
			return true, nil
		}
	}
	if refs.MintAccessor != "" {
		alive, err := b.c.LookupAccessor(ctx, refs.MintAccessor)
		if err != nil {
			return false, fmt.Errorf("vaultlease: look up mint token %s: %w", refs.MintAccessor, err)
		}
		return alive, nil
	}
	return false, nil
}

// Renew extends the mint token and the Vault lease by ttl. The new expiry
// is the earlier of the two: the token's explicit max TTL (the lease's max
// TTL) caps the secret whatever the engine grants.
func (b *Backend) Renew(ctx context.Context, refs broker.Refs, ttl time.Duration) (time.Time, error) {
	if refs.VaultLeaseID == "" || refs.MintAccessor == "" {
		return time.Time{}, fmt.Errorf("vaultlease: renew: %w: refs lack the Vault lease or the mint token", broker.ErrNotRenewable)
	}
	tokenTTL, err := b.c.RenewAccessor(ctx, refs.MintAccessor, ttl)
	if err != nil {
		return time.Time{}, fmt.Errorf("vaultlease: renew mint token %s: %w", refs.MintAccessor, err)
	}
	// The secret cannot outlive the mint token: ask for no more.
	leaseTTL, err := b.c.RenewLease(ctx, refs.VaultLeaseID, min(ttl, tokenTTL))
	if err != nil {
		return time.Time{}, fmt.Errorf("vaultlease: renew lease %s: %w", refs.VaultLeaseID, err)
	}
	return b.c.Now().Add(min(tokenTTL, leaseTTL)), nil
}
