package vaultlease

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
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
	// TokenRole is the token role group mint tokens are created
	// through; default latch-mint.
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
	c      *vault.Client
	cfg    Config
	check  RenderCheck
	groups *vault.Groups // the mint tokens: one per agent × task × template version, rotated
}

var (
	_ broker.Backend = (*Backend)(nil)
	_ broker.Namer   = (*Backend)(nil)
	_ broker.Grouper = (*Backend)(nil)
	_ broker.Renewer = (*Backend)(nil)
)

// New returns the backend, which mints through c.
func New(c *vault.Client, cfg Config) (*Backend, error) {
	if c == nil {
		return nil, errors.New("vaultlease: no Vault client")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	return &Backend{c: c, cfg: cfg, check: cfg.RenderCheck(), groups: vault.NewGroups(c, cfg.TokenRole, "latch-mint", vault.MintGroupFor)}, nil
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

// Refs names the group whose mint token Mint reads with, creating the
// token when the group has none that takes leases (broker.Namer): the
// intent holds it before the read, so a credential a crash leaves behind
// is found through its group.
func (b *Backend) Refs(ctx context.Context, req broker.MintRequest) (broker.Refs, error) {
	if _, err := b.path(req); err != nil {
		return broker.Refs{}, err
	}
	g, err := b.groups.For(ctx, req)
	if err != nil {
		return broker.Refs{}, fmt.Errorf("vaultlease: %w", err)
	}
	return broker.Refs{Group: g.Accessor}, nil
}

// Mint reads the rendered path with the group's mint token: one Vault
// call, and the Vault lease belongs to that token, so revoking the group
// revokes it. Without req.Prepared.Refs it names the group first.
func (b *Backend) Mint(ctx context.Context, req broker.MintRequest) (broker.Minted, error) {
	path, err := b.path(req)
	if err != nil {
		return broker.Minted{}, err
	}
	if req.Prepared.Refs.Group == "" {
		if req.Prepared.Refs, err = b.Refs(ctx, req); err != nil {
			return broker.Minted{}, err
		}
	}
	g, err := b.groups.Held(req)
	if err != nil {
		return broker.Minted{}, fmt.Errorf("vaultlease: %w", err)
	}
	s, err := b.c.Do(ctx, vault.Request{Op: "lease.read", Method: http.MethodGet, Path: path, Token: g.Token})
	if err == nil && (s == nil || s.LeaseID == "") {
		err = &vault.Error{Op: "lease.read", Path: path, Messages: []string{
			"Vault returned no lease: vault-lease needs a path that issues leases (database/creds/..., aws/creds/...)"}}
	}
	if err != nil {
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
		Refs:      broker.Refs{VaultLeaseID: s.LeaseID, Group: g.Accessor},
		ExpiresAt: expires,
		Renewable: s.Renewable && req.EffectiveMaxTTL() > req.TTL,
	}, nil
}

// ForgetGroup stops using a group for new leases (broker.Grouper).
func (b *Backend) ForgetGroup(accessor string) { b.groups.Forget(accessor) }

// RevokeGroup revokes a group's mint token, and with it every Vault lease
// read with it (broker.Grouper). Vault revokes those leases in the
// background once the token is gone, so RevokeGroup then lists the
// leases left under each engine prefix members use — one call per
// prefix, however many leases — until none of members' is, as a
// synchronous revocation would have returned.
func (b *Backend) RevokeGroup(ctx context.Context, accessor string, members []broker.Refs) error {
	if err := b.groups.Revoke(ctx, accessor); err != nil {
		return fmt.Errorf("vaultlease: %w", err)
	}
	waiting := map[string]map[string]bool{} // prefix → lease ID suffixes
	for _, r := range members {
		if r.VaultLeaseID == "" || r.MintAccessor != "" {
			continue
		}
		i := strings.LastIndexByte(r.VaultLeaseID, '/')
		prefix, suffix := r.VaultLeaseID[:i+1], r.VaultLeaseID[i+1:]
		if waiting[prefix] == nil {
			waiting[prefix] = map[string]bool{}
		}
		waiting[prefix][suffix] = true
	}
	for wait := 5 * time.Millisecond; ; wait = min(2*wait, 200*time.Millisecond) {
		for prefix, ids := range waiting {
			left, err := b.c.ListLeases(ctx, prefix)
			if err != nil {
				return fmt.Errorf("vaultlease: list the leases of %s: %w", prefix, err)
			}
			if !slices.ContainsFunc(left, func(id string) bool { return ids[id] }) {
				delete(waiting, prefix)
			}
		}
		if len(waiting) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("vaultlease: %w: the leases of group %s were not revoked in time", broker.ErrBackendUnavailable, accessor)
		case <-time.After(wait):
		}
	}
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
// the secret when it returns), and the per-lease mint token of an older
// latch; that token is revoked even if the lease revocation failed, since
// that revokes the lease too. Refs with a group only are those of a mint
// that crashed before recording its Vault lease: nothing can be revoked
// alone (broker.ErrExpiresOnItsOwn; the lease dies with its group). Gone
// objects count as revoked.
func (b *Backend) Revoke(ctx context.Context, refs broker.Refs) error {
	if refs.VaultLeaseID == "" && refs.MintAccessor == "" {
		if refs.Group != "" {
			return fmt.Errorf("vaultlease: %w", broker.ErrExpiresOnItsOwn)
		}
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

// Renew extends the Vault lease by ttl, which the Service caps at the
// lease's max TTL; the group's mint token outlives that, and bounds the
// expiry returned. The per-lease
// mint token of an older latch is renewed first, and caps the secret.
func (b *Backend) Renew(ctx context.Context, refs broker.Refs, ttl time.Duration) (time.Time, error) {
	if refs.VaultLeaseID == "" {
		return time.Time{}, fmt.Errorf("vaultlease: renew: %w: refs lack the Vault lease", broker.ErrNotRenewable)
	}
	if refs.MintAccessor == "" {
		granted, err := b.c.RenewLease(ctx, refs.VaultLeaseID, ttl)
		if err != nil {
			return time.Time{}, fmt.Errorf("vaultlease: renew lease %s: %w", refs.VaultLeaseID, err)
		}
		// The lease dies with its group's mint token, whatever the
		// engine granted.
		expires := b.c.Now().Add(granted)
		if end, err := b.groups.Expires(ctx, refs.Group); err == nil && end.Before(expires) {
			expires = end
		}
		return expires, nil
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
