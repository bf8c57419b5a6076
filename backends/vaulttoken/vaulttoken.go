package vaulttoken

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/latchbroker/latch/backends/vault"
	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/templates"
)

// Type is the backend type in latch's config.
const Type = templates.BackendVaultToken

// DefaultTokenRole is the token role tokens are created through.
const DefaultTokenRole = "latch-token"

// DefaultGroupRole is the token role group parents are created through.
const DefaultGroupRole = "latch-group"

// PolicyPrefix starts every policy this backend writes. latch's Vault
// policy allows writing sys/policies/acl/latch-* only, and the token role
// allows assigning latch-* only, so no policy name outside it can ever be
// touched or handed out; admin policies must not use this prefix.
const PolicyPrefix = "latch-"

// SharedPrefix starts the policies named by their content (SharedPolicyName):
// one per installation and distinct rendered policy, shared by every lease
// that renders it. Names of the form latch-<lease id> are per-lease
// policies of older latches, deleted with their lease.
const SharedPrefix = PolicyPrefix + "p-"

// Config is the backend's block in latch's config (all but type).
type Config struct {
	// TokenRole is the Vault token role agent tokens are created
	// through; default latch-token.
	TokenRole string `yaml:"token_role"`
	// GroupRole is the token role group parents are created through;
	// default latch-group.
	GroupRole string `yaml:"group_role"`
}

// Validate names the bad key.
func (c Config) Validate() error {
	for _, kv := range [][2]string{{"token_role", c.TokenRole}, {"group_role", c.GroupRole}} {
		if kv[1] != "" {
			if err := vault.CheckName(kv[0], kv[1]); err != nil {
				return fmt.Errorf("vaulttoken: %w", err)
			}
		}
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.TokenRole == "" {
		c.TokenRole = DefaultTokenRole
	}
	if c.GroupRole == "" {
		c.GroupRole = DefaultGroupRole
	}
	return c
}

// Backend is the vault-token backend.
type Backend struct {
	c      *vault.Client
	cfg    Config
	prefix string // SharedPrefix and the owner's tag: this installation's policies
	// written are the shared policies this process wrote, and when: Mint
	// skips writing one again for WrittenFor. DeletePolicy forgets one
	// before deleting it.
	written sync.Map // name → time.Time
	groups  *vault.Groups
}

var (
	_ broker.Backend         = (*Backend)(nil)
	_ broker.Namer           = (*Backend)(nil)
	_ broker.PolicyCollector = (*Backend)(nil)
	_ broker.Grouper         = (*Backend)(nil)
	_ broker.Renewer         = (*Backend)(nil)
)

// New returns the backend, which mints through c.
func New(c *vault.Client, cfg Config) (*Backend, error) {
	if c == nil {
		return nil, errors.New("vaulttoken: no Vault client")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	return &Backend{c: c, cfg: cfg, prefix: sharedPrefixOf(c.Owner()), groups: vault.NewGroups(c, cfg.GroupRole, "latch-group", vault.GroupFor)}, nil
}

// ulidRE matches a ULID in Crockford base32 (either case): lease IDs end up
// in policy names, so nothing else is accepted.
var ulidRE = regexp.MustCompile(`^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$`)

// SharedPolicyName is the name of owner's policy whose text is policy:
// latch-p-, a tag of the owner (32 bits of its SHA-256), and 128 bits of
// the text's SHA-256, in lower case (Vault lower-cases policy names).
// Equal texts share a name, and so one policy in Vault.
func SharedPolicyName(owner, policy string) string {
	sum := sha256.Sum256([]byte(policy))
	return sharedPrefixOf(owner) + hex.EncodeToString(sum[:16])
}

func sharedPrefixOf(owner string) string {
	tag := sha256.Sum256([]byte(owner))
	return SharedPrefix + hex.EncodeToString(tag[:4]) + "-"
}

// isPerLease reports whether name is an older latch's per-lease policy.
func isPerLease(name string) bool {
	return strings.HasPrefix(name, PolicyPrefix) && !strings.HasPrefix(name, SharedPrefix)
}

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

// WrittenFor is how long Mint trusts that a shared policy it wrote is
// still in Vault. Only latch's collection deletes them, and it forgets
// first; the bound is for anyone else who does (an operator, another
// latch configured with the same server.id): tokens minted meanwhile
// would carry a missing policy and fail closed, for at most this long.
const WrittenFor = time.Minute

func (b *Backend) recentlyWritten(policy string) bool {
	at, ok := b.written.Load(policy)
	return ok && b.c.Now().Sub(at.(time.Time)) < WrittenFor
}

// Refs names the shared policy and the group Mint will use: the intent
// holds them before the token exists, so the Service never collects a
// policy an issue in flight is about to use, and a bulk revocation that
// retires the group fails the commit. It calls Vault only to
// create the group's parent, when the group has none that takes tokens.
func (b *Backend) Refs(ctx context.Context, req broker.MintRequest) (broker.Refs, error) {
	if err := validate(req); err != nil {
		return broker.Refs{}, err
	}
	g, err := b.groups.For(ctx, req)
	if err != nil {
		return broker.Refs{}, fmt.Errorf("vaulttoken: %w", err)
	}
	return broker.Refs{Policy: SharedPolicyName(b.c.Owner(), req.Policy), Group: g.Accessor}, nil
}

// Mint writes the lease's shared policy, unless this process has written
// it already, and creates the agent's token. Errors wrap
// broker.ErrBackendUnavailable when Vault could not be reached in time, and
// broker.ErrInvalidMintRequest for a request this backend cannot serve.
func (b *Backend) Mint(ctx context.Context, req broker.MintRequest) (broker.Minted, error) {
	if err := validate(req); err != nil {
		return broker.Minted{}, err
	}
	policy := SharedPolicyName(b.c.Owner(), req.Policy)
	if req.Prepared.Refs.Group == "" {
		refs, err := b.Refs(ctx, req)
		if err != nil {
			return broker.Minted{}, err
		}
		req.Prepared.Refs = refs
	}
	parent, err := b.groups.Held(req)
	if err != nil {
		return broker.Minted{}, fmt.Errorf("vaulttoken: %w", err)
	}
	if !b.recentlyWritten(policy) {
		if _, err := b.c.Write(ctx, "policy.write", "sys/policies/acl/"+policy, map[string]any{"policy": req.Policy}); err != nil {
			return broker.Minted{}, fmt.Errorf("vaulttoken: write policy %s for lease %s: %w", policy, req.LeaseID, err)
		}
		b.written.Store(policy, b.c.Now())
	}
	tok, err := b.c.CreateToken(ctx, "token.create", vault.TokenRequest{
		Role:           b.cfg.TokenRole,
		Policies:       []string{policy},
		TTL:            req.TTL,
		ExplicitMaxTTL: req.EffectiveMaxTTL(),
		Renewable:      req.Renewable,
		DisplayName:    "latch-" + req.Task,
		Meta:           vault.LeaseMeta(req),
		Parent:         parent.Token,
	})
	if err != nil {
		// The policy stays: other leases may use it, and the Service
		// collects it once none does.
		return broker.Minted{}, fmt.Errorf("vaulttoken: create token for lease %s: %w", req.LeaseID, err)
	}
	refs := broker.Refs{TokenAccessor: tok.Accessor, Policy: policy, Group: parent.Accessor}
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

// Revoke revokes the token by accessor. A shared policy stays for the
// Service to collect; an older latch's per-lease policy is deleted with
// its lease, as then. Refs with a shared policy and no token are those of
// a mint that crashed before recording its token: nothing can be revoked
// (broker.ErrExpiresOnItsOwn). Gone objects count as revoked.
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
	switch {
	case refs.Policy != "" && !strings.HasPrefix(refs.Policy, PolicyPrefix):
		errs = append(errs, fmt.Errorf("vaulttoken: refusing to delete policy %q: not one of latch's policies", refs.Policy))
	case isPerLease(refs.Policy):
		if err := b.deletePolicy(ctx, refs.Policy); err != nil {
			errs = append(errs, fmt.Errorf("vaulttoken: delete policy %s: %w", refs.Policy, err))
		}
	case refs.TokenAccessor == "":
		return fmt.Errorf("vaulttoken: %w", broker.ErrExpiresOnItsOwn)
	}
	return errors.Join(errs...)
}

func (b *Backend) deletePolicy(ctx context.Context, policy string) error {
	if !strings.HasPrefix(policy, PolicyPrefix) || vault.CheckName("policy", policy) != nil {
		return fmt.Errorf("refusing to delete policy %q: not one of latch's policies", policy)
	}
	return b.c.Delete(ctx, "policy.delete", "sys/policies/acl/"+policy)
}

// Policies lists the shared policies in Vault (broker.PolicyCollector).
func (b *Backend) Policies(ctx context.Context) ([]string, error) {
	s, err := b.c.Do(ctx, vault.Request{Op: "policy.list", Method: "LIST", Path: "sys/policies/acl"})
	if err != nil {
		return nil, fmt.Errorf("vaulttoken: list policies: %w", err)
	}
	var out []string
	if s != nil {
		keys, _ := s.Data["keys"].([]any)
		for _, k := range keys {
			if name, ok := k.(string); ok && strings.HasPrefix(name, b.prefix) {
				out = append(out, name)
			}
		}
	}
	return out, nil
}

// DeletePolicy deletes a shared policy nothing uses any more
// (broker.PolicyCollector), forgetting first that it was written.
func (b *Backend) DeletePolicy(ctx context.Context, name string) error {
	if !strings.HasPrefix(name, b.prefix) {
		return fmt.Errorf("vaulttoken: refusing to collect policy %q: not one of this latch's shared policies", name)
	}
	b.written.Delete(name)
	if err := b.deletePolicy(ctx, name); err != nil {
		return fmt.Errorf("vaulttoken: delete policy %s: %w", name, err)
	}
	return nil
}

// Lookup reports whether the token, or else an older latch's per-lease
// policy, still exists (a shared policy says nothing of one lease).
func (b *Backend) Lookup(ctx context.Context, refs broker.Refs) (bool, error) {
	if refs.TokenAccessor != "" {
		alive, err := b.c.LookupAccessor(ctx, refs.TokenAccessor)
		if err != nil || alive {
			return alive, wrap("look up token", err)
		}
	}
	if isPerLease(refs.Policy) {
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

// ForgetGroup stops using a group for new tokens (broker.Grouper).
func (b *Backend) ForgetGroup(accessor string) { b.groups.Forget(accessor) }

// RevokeGroup revokes a group's parent token, and with it every token of
// the group, before it returns (broker.Grouper).
func (b *Backend) RevokeGroup(ctx context.Context, accessor string, _ []broker.Refs) error {
	return wrap("", b.groups.Revoke(ctx, accessor))
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
	switch {
	case err == nil:
		return nil
	case what == "":
		return fmt.Errorf("vaulttoken: %w", err)
	}
	return fmt.Errorf("vaulttoken: %s: %w", what, err)
}
