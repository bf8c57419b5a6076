package vaulttoken

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/latchbroker/latch/backends/vault"
	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/templates"
)

// Type is the backend type in latch's config.
const Type = templates.BackendVaultToken

// DefaultTokenRole is the token role tokens are created through.
const DefaultTokenRole = "latch-token"

// PolicyPrefix starts every policy this backend writes. latch's Vault
// policy allows writing sys/policies/acl/latch-* only, and the token role
// allows assigning latch-* only, so no policy name outside it can ever be
// touched or handed out; admin policies must not use this prefix.
const PolicyPrefix = "latch-"

// Config is the backend's block in latch's config (all but type).
type Config struct {
	// TokenRole is the Vault token role agent tokens are created
	// through; default latch-token.
	TokenRole string `yaml:"token_role"`
}

// Validate names the bad key.
func (c Config) Validate() error {
	if c.TokenRole != "" {
		if err := vault.CheckName("token_role", c.TokenRole); err != nil {
			return fmt.Errorf("vaulttoken: %w", err)
		}
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.TokenRole == "" {
		c.TokenRole = DefaultTokenRole
	}
	return c
}

// Backend is the vault-token backend.
type Backend struct {
	c   *vault.Client
	cfg Config
}

var (
	_ broker.Backend  = (*Backend)(nil)
	_ broker.Preparer = (*Backend)(nil)
	_ broker.Renewer  = (*Backend)(nil)
)

// New returns the backend, which mints through c.
func New(c *vault.Client, cfg Config) (*Backend, error) {
	if c == nil {
		return nil, errors.New("vaulttoken: no Vault client")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Backend{c: c, cfg: cfg.withDefaults()}, nil
}

// ulidRE matches a ULID in Crockford base32 (either case): lease IDs end up
// in policy names, so nothing else is accepted.
var ulidRE = regexp.MustCompile(`^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$`)

// PolicyName is the per-lease policy's name: latch-<lease id>, lower case
// because Vault lower-cases policy names.
func PolicyName(leaseID string) string { return PolicyPrefix + strings.ToLower(leaseID) }

func validate(req broker.MintRequest) error {
	if err := req.Validate(); err != nil {
		return fmt.Errorf("vaulttoken: %w", err)
	}
	if !ulidRE.MatchString(req.LeaseID) {
		return fmt.Errorf("vaulttoken: %w: lease ID %q is not a ULID", broker.ErrInvalidMintRequest, req.LeaseID)
	}
	if err := CheckPolicy(req.Policy); err != nil {
		return fmt.Errorf("vaulttoken: %w: task %s: %v", broker.ErrInvalidMintRequest, req.Task, err)
	}
	return nil
}

// Prepare names the policy Mint will write. It makes no Vault call: the
// name is derived from the lease ID, so it can be written into the intent
// before anything exists in Vault, and Revoke with only that name makes
// any token Mint created powerless.
func (b *Backend) Prepare(_ context.Context, req broker.MintRequest) (broker.Prepared, error) {
	if err := validate(req); err != nil {
		return broker.Prepared{}, err
	}
	return broker.Prepared{Refs: broker.Refs{Policy: PolicyName(req.LeaseID)}}, nil
}

// Mint writes the lease's policy and creates the agent's token. Errors wrap
// broker.ErrBackendUnavailable when Vault could not be reached in time, and
// broker.ErrInvalidMintRequest for a request this backend cannot serve.
func (b *Backend) Mint(ctx context.Context, req broker.MintRequest) (broker.Minted, error) {
	if err := validate(req); err != nil {
		return broker.Minted{}, err
	}
	policy := PolicyName(req.LeaseID)
	if _, err := b.c.Write(ctx, "policy.write", "sys/policies/acl/"+policy, map[string]any{"policy": req.Policy}); err != nil {
		return broker.Minted{}, fmt.Errorf("vaulttoken: write policy %s for lease %s: %w", policy, req.LeaseID, err)
	}
	tok, err := b.c.CreateToken(ctx, "token.create", vault.TokenRequest{
		Role:           b.cfg.TokenRole,
		Policies:       []string{policy},
		TTL:            req.TTL,
		ExplicitMaxTTL: req.EffectiveMaxTTL(),
		Renewable:      req.Renewable,
		DisplayName:    "latch-" + req.Task,
		Meta:           vault.LeaseMeta(req),
	})
	if err != nil {
		vault.Cleanup(ctx, err, func(ctx context.Context) error { return b.deletePolicy(ctx, policy) })
		return broker.Minted{}, fmt.Errorf("vaulttoken: create token for lease %s: %w", req.LeaseID, err)
	}
	refs := broker.Refs{TokenAccessor: tok.Accessor, Policy: policy}
	if !slices.Equal(tok.Policies, []string{policy}) {
		// A token role that adds policies (token_policies, or a missing
		// token_no_default_policy with an old Vault) would hand the agent
		// more than the template rendered.
		err := fmt.Errorf("vaulttoken: token role %s gave lease %s's token policies %q, want only %q: fix the role",
			b.cfg.TokenRole, req.LeaseID, tok.Policies, policy)
		vault.Cleanup(ctx, err, func(ctx context.Context) error { return b.Revoke(ctx, refs) })
		return broker.Minted{}, err
	}
	return broker.Minted{
		Secret:    tok.Secret,
		Refs:      refs,
		ExpiresAt: b.c.Now().Add(tok.TTL),
		Renewable: tok.Renewable,
	}, nil
}

// Revoke revokes the token by accessor, then deletes the policy; the
// policy is deleted even when revoking the token failed, because that alone
// strips the token of every capability. Gone objects count as revoked.
func (b *Backend) Revoke(ctx context.Context, refs broker.Refs) error {
	if refs.TokenAccessor == "" && refs.Policy == "" {
		return fmt.Errorf("vaulttoken: revoke: refs name neither a token nor a policy")
	}
	var errs []error
	if refs.TokenAccessor != "" {
		if err := b.c.RevokeAccessor(ctx, refs.TokenAccessor); err != nil {
			errs = append(errs, fmt.Errorf("vaulttoken: revoke token %s: %w", refs.TokenAccessor, err))
		}
	}
	if refs.Policy != "" {
		if err := b.deletePolicy(ctx, refs.Policy); err != nil {
			errs = append(errs, fmt.Errorf("vaulttoken: delete policy %s: %w", refs.Policy, err))
		}
	}
	return errors.Join(errs...)
}

func (b *Backend) deletePolicy(ctx context.Context, policy string) error {
	if !strings.HasPrefix(policy, PolicyPrefix) || vault.CheckName("policy", policy) != nil {
		return fmt.Errorf("refusing to delete policy %q: not a latch-<lease> policy", policy)
	}
	return b.c.Delete(ctx, "policy.delete", "sys/policies/acl/"+policy)
}

// Lookup reports whether the token, or else the policy, still exists.
func (b *Backend) Lookup(ctx context.Context, refs broker.Refs) (bool, error) {
	if refs.TokenAccessor != "" {
		alive, err := b.c.LookupAccessor(ctx, refs.TokenAccessor)
		if err != nil || alive {
			return alive, wrap("look up token", err)
		}
	}
	if refs.Policy != "" {
		_, err := b.c.Read(ctx, "policy.read", "sys/policies/acl/"+refs.Policy)
		switch {
		case err == nil:
			return true, nil
		case vault.StatusOf(err) == http.StatusNotFound:
			return false, nil
		default:
			return false, wrap("look up policy", err)
		}
	}
	return false, nil
}

// Renew extends the token by ttl, up to its explicit max TTL.
func (b *Backend) Renew(ctx context.Context, refs broker.Refs, ttl time.Duration) (time.Time, error) {
	if refs.TokenAccessor == "" {
		return time.Time{}, fmt.Errorf("vaulttoken: renew: %w: no token accessor", broker.ErrNotRenewable)
	}
	granted, err := b.c.RenewAccessor(ctx, refs.TokenAccessor, ttl)
	if err != nil {
		return time.Time{}, wrap("renew token", err)
	}
	return b.c.Now().Add(granted), nil
}

func wrap(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("vaulttoken: %s: %w", what, err)
}
