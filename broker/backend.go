package broker

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Backend mints and revokes one kind of credential. Implementations live in
// backends/... (vault-token, vault-lease, vault-pki); the Service calls them
// and never learns how a credential is made.
//
// Errors: every method returns an error that wraps ErrBackendUnavailable
// when trying again later may succeed (the backend could not be reached, did
// not answer within the context's deadline, or answered with a server-side
// or rate-limit error). Any other error is permanent for this input: the
// backend refused the request (a bad path, a missing permission, a role that
// does not exist), and retrying the same call will fail the same way.
// Errors never contain a secret value.
type Backend interface {
	// Mint creates the credential req asks for. The context's deadline
	// bounds the whole call, retries included. On error nothing usable was
	// returned; what Mint may have created in the backend is cleaned up on
	// a best-effort basis, and the caller still revokes the refs it was
	// given by Prepare (see Preparer).
	Mint(ctx context.Context, req MintRequest) (Minted, error)

	// Revoke destroys everything refs point to. It is idempotent: objects
	// that are already gone count as revoked, so a revocation queue may
	// call it again after a crash or a retryable error. It accepts the
	// partial refs of an intent that never got its Minted (see Preparer).
	Revoke(ctx context.Context, refs Refs) error

	// Lookup reports whether anything refs point to still exists in the
	// backend, for reconciliation: alive is false once every object is
	// revoked or expired.
	Lookup(ctx context.Context, refs Refs) (alive bool, err error)
}

// Preparer is implemented by backends that can name, before Mint, what Mint
// will create — so the Service can write those refs into the lease's intent
// record first. If latch dies between Mint and the commit of the lease,
// reconciliation calls Revoke with the intent's refs and nothing latch
// created outlives its lease untracked.
//
// The Service calls Prepare, stores Prepared.Refs in the intent, then calls
// Mint with MintRequest.Prepared set. A backend that implements Preparer
// also accepts a Mint without Prepared (it prepares internally; the crash
// guarantee then holds only for what Mint itself tracks).
//
// Prepare returns the same errors as Mint. When Prepare fails, nothing
// needs revoking; when Mint fails after a successful Prepare, the caller
// revokes Prepared.Refs.
type Preparer interface {
	Prepare(ctx context.Context, req MintRequest) (Prepared, error)
}

// Namer is implemented by backends whose refs are known before the
// credential exists (vault-token: the name of the shared policy and the
// group's parent, which Refs opens when the group has none). The Service
// writes them into the intent it stores before calling Mint, and passes
// them to Mint in MintRequest.Prepared.Refs, so an issue takes two durable
// commits, not three.
type Namer interface {
	Refs(ctx context.Context, req MintRequest) (Refs, error)
}

// PolicyCollector is implemented by backends that share an object among
// leases, such as vault-token's policies named by their content: Mint
// writes one when it does not exist, and nothing deletes it but the
// Service's collection, when no intent or live lease names it (Store.
// LivePolicies), under Change.MarkDeleting so that no issue races the
// deletion.
type PolicyCollector interface {
	// Policies lists the shared objects the backend holds.
	Policies(ctx context.Context) ([]string, error)
	// DeletePolicy deletes one; it must forget that it exists first, so
	// that the next Mint naming it writes it again.
	DeletePolicy(ctx context.Context, name string) error
}

// Grouper is implemented by backends that create each credential under a
// parent shared by leases of one agent, task and template version
// (vault-token: a parent token; vault-lease: the mint token the secret is
// read with; sharded and rotated), named in Refs.Group from Namer.
// A revocation by agent, task, template or all then revokes each group's
// parent once, which revokes every credential under it, instead of one
// call per lease; one lease is still revoked by its own refs.
type Grouper interface {
	// RevokeGroup revokes a group's parent and everything under it, and
	// returns once what members (the refs of the group's leases latch
	// knows of) point to is revoked. It is idempotent: a parent that is
	// gone counts as revoked.
	RevokeGroup(ctx context.Context, group string, members []Refs) error
	// ForgetGroup stops using a group for new credentials; the next
	// Refs opens another. The Service calls it before it marks the group
	// retired in the store (Change.RetireGroups), and again when an
	// intent finds it retired (another replica, a restart).
	ForgetGroup(group string)
}

// Renewer is implemented by backends whose credentials can be extended.
// Renew asks for ttl more from now, up to the max TTL fixed at mint time,
// and returns the new expiry, which may be earlier than asked. It returns
// ErrNotRenewable when the credential cannot be extended at all, plus the
// errors of Backend.
type Renewer interface {
	Renew(ctx context.Context, refs Refs, ttl time.Duration) (expiresAt time.Time, err error)
}

// Errors returned by backends. Test with errors.Is: backends wrap them with
// context.
var (
	// ErrBackendUnavailable marks a retryable failure: the backend was
	// unreachable, timed out, was sealed or overloaded, or answered with a
	// 5xx or 429. A revocation that fails with it stays queued.
	ErrBackendUnavailable = errors.New("backend unavailable")

	// ErrNotRenewable means the credential cannot be renewed (the template
	// does not allow it, or the credential kind has no renewal, such as a
	// certificate).
	ErrNotRenewable = errors.New("credential is not renewable")

	// ErrInvalidMintRequest means a MintRequest is missing something a
	// backend needs; it is a bug in the caller or a template that does not
	// fit its backend, never a reason to retry.
	ErrInvalidMintRequest = errors.New("invalid mint request")
	// ErrGroupGone is returned by a Grouper's Mint when the group its
	// refs name was revoked, or its parent expired, since the intent: a
	// bulk revocation took the group while the issue was in flight. It is
	// retryable: the Service tries the issue again, in a new group.
	ErrGroupGone = fmt.Errorf("%w: the group's parent was revoked or expired since the intent", ErrBackendUnavailable)

	// ErrExpiresOnItsOwn is returned by Revoke when the refs name nothing
	// that can be revoked: a mint that crashed after the backend created
	// the credential and before its refs were recorded (a vault-token
	// token of a shared policy). That credential was never delivered and
	// expires at its TTL; the revocation is done, counted as "expires".
	ErrExpiresOnItsOwn = errors.New("nothing to revoke: the credential, if one was minted, was never delivered and expires at its TTL")
)

// MintRequest is everything a backend needs to mint one lease's credential:
// who and what it is for, how long it lives, and the outputs the template
// rendered for this request. Rendering happens in templates; a backend only
// uses the rendered values, so a request cannot widen its own credential.
type MintRequest struct {
	// LeaseID is the lease's ULID. Backends use it to name what they create
	// (for example the Vault policy latch-<lease id>) and record it as
	// metadata, so an operator can trace a Vault object back to its lease.
	LeaseID string
	// Agent is the agent's SPIFFE ID; Task the template name, and
	// TemplateVersion its version hash (a Grouper groups by all three).
	Agent           string
	Task            string
	TemplateVersion string

	// TTL is the lease TTL. The credential expires no later than TTL from
	// now unless renewed. MaxTTL bounds renewals; it is at least TTL.
	TTL    time.Duration
	MaxTTL time.Duration
	// Renewable says whether the template allows renewal.
	Renewable bool

	// Policy is the rendered Vault ACL policy (vault-token).
	Policy string
	// Path is the rendered engine path (vault-lease).
	Path string
	// Names are the rendered certificate names (vault-pki).
	Names CertNames
	// Vars are the template's rendered vars, for backends that take extra
	// inputs.
	Vars map[string]string

	// Prepared is what Preparer.Prepare returned for this lease, if the
	// backend is a Preparer and the caller prepared. Zero otherwise.
	Prepared Prepared
}

// CertNames are rendered certificate names.
type CertNames struct {
	CommonName string
	AltNames   []string
	URISANs    []string
	IPSANs     []string
}

// Validate checks the fields every backend needs.
func (r MintRequest) Validate() error {
	var missing []string
	if r.LeaseID == "" {
		missing = append(missing, "lease ID")
	}
	if r.Agent == "" {
		missing = append(missing, "agent")
	}
	if r.Task == "" {
		missing = append(missing, "task")
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: missing %v", ErrInvalidMintRequest, missing)
	}
	if r.TTL <= 0 {
		return fmt.Errorf("%w: TTL must be positive, got %s", ErrInvalidMintRequest, r.TTL)
	}
	if r.MaxTTL != 0 && r.MaxTTL < r.TTL {
		return fmt.Errorf("%w: max TTL %s is below TTL %s", ErrInvalidMintRequest, r.MaxTTL, r.TTL)
	}
	return nil
}

// EffectiveMaxTTL is the longest the credential may live: MaxTTL when the
// lease is renewable and MaxTTL is set, TTL otherwise.
func (r MintRequest) EffectiveMaxTTL() time.Duration {
	if r.Renewable && r.MaxTTL > r.TTL {
		return r.MaxTTL
	}
	return r.TTL
}

// Prepared is the result of Preparer.Prepare.
type Prepared struct {
	// Refs are written into the lease's intent before Mint is called.
	Refs Refs
	// Credential is the backend's own per-lease credential that Mint uses
	// (for the Vault backends, the per-lease token the secret is minted
	// under). It is passed from Prepare to Mint in memory only: never
	// stored, logged or sent.
	Credential Secret
}

// IsZero reports whether nothing was prepared.
func (p Prepared) IsZero() bool { return p.Refs.IsZero() && p.Credential.IsZero() }

// Refs are the references needed to find, renew and revoke a minted
// credential — never the credential itself. They are stored in the lease
// record (and, from Prepare, in the intent), so every field is safe to
// store, log and show to an operator.
type Refs struct {
	// TokenAccessor is the accessor of the token handed to the agent
	// (vault-token).
	TokenAccessor string `json:"token_accessor,omitempty"`
	// Policy is the Vault ACL policy the token carries (vault-token: latch-p-<owner tag>-<hash>, shared by content; latch-<lease> of older latches).
	Policy string `json:"policy,omitempty"`
	// VaultLeaseID is the Vault lease of a dynamic secret (vault-lease, and
	// vault-pki when the PKI role generates leases).
	VaultLeaseID string `json:"vault_lease_id,omitempty"`
	// Serial is the certificate serial number (vault-pki), colon-separated
	// hex as Vault writes it.
	Serial string `json:"serial,omitempty"`
	// Group is the parent the credential was created under (Grouper;
	// vault-token: the accessor of the group's parent token).
	Group string `json:"group,omitempty"`
	// MintAccessor is the accessor of the per-lease token the secret was
	// minted under (vault-lease, vault-pki). Vault revokes every lease a
	// token created when the token is revoked or expires, so revoking it
	// revokes the secret even when VaultLeaseID was never recorded.
	MintAccessor string `json:"mint_accessor,omitempty"`
}

// IsZero reports whether refs point to nothing.
func (r Refs) IsZero() bool { return r == Refs{} }

// Merge returns r with the empty fields filled in from o.
func (r Refs) Merge(o Refs) Refs {
	fill := func(dst *string, src string) {
		if *dst == "" {
			*dst = src
		}
	}
	fill(&r.TokenAccessor, o.TokenAccessor)
	fill(&r.Policy, o.Policy)
	fill(&r.VaultLeaseID, o.VaultLeaseID)
	fill(&r.Serial, o.Serial)
	fill(&r.MintAccessor, o.MintAccessor)
	fill(&r.Group, o.Group)
	return r
}

// Minted is a freshly minted credential.
type Minted struct {
	// Secret is the credential; it redacts itself (see Secret).
	Secret Secret
	// Refs include the Prepared refs, so revoking Refs revokes everything.
	Refs Refs
	// ExpiresAt is when the credential stops working unless renewed: the
	// earlier of the lease TTL and the backend's own expiry.
	ExpiresAt time.Time
	// Renewable says whether the backend will accept Renew for it.
	Renewable bool
}
