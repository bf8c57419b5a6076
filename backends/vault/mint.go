package vault

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/latchbroker/latch/broker"
)

// DefaultMintTokenRole is the token role per-lease mint tokens are created
// through (see PrepareMintToken and the README's Vault policy section).
const DefaultMintTokenRole = "latch-mint"

// MintGroupFor is how long a group's mint token takes new leases
// (vault-lease, vault-pki): short, because a Vault lease read with it
// lives until the engine's own TTL or the mint token's end, whichever
// comes first, when latch is not running to revoke it at the lease TTL.
// The bound is then the lease's max TTL plus at most two minutes (a
// quarter of it each when that is shorter; see GroupFor).
const MintGroupFor = time.Minute

// cleanupTimeout bounds best-effort cleanup after a failed mint when the
// caller's context has already ended.
const cleanupTimeout = 5 * time.Second

// PrepareMintToken creates the per-lease "mint token" that vault-pki
// mints under (vault-lease reads with its group's: see Groups), and
// returns it as a broker.Prepared: its accessor
// in Refs.MintAccessor (for the lease's intent record), its value in
// Credential (for Mint only).
//
// Why: Vault revokes every lease a token created when that token is
// revoked or expires. So the secret read with a mint token can always be
// revoked through an accessor known before the read — even if latch dies
// before it learns the secret's own lease ID — and it cannot outlive the
// mint token, whose TTL is the lease TTL (its explicit max TTL the lease's
// max TTL when renewable). The token is an orphan (the role says so), so
// latch's own token expiring or being re-issued revokes nothing; it carries
// only the role's allowed policies and never the default policy; and it
// never leaves latch.
func (c *Client) PrepareMintToken(ctx context.Context, role string, req broker.MintRequest) (broker.Prepared, error) {
	maxTTL := req.EffectiveMaxTTL()
	tok, err := c.CreateToken(ctx, "mint-token.create", TokenRequest{
		Role:           role,
		TTL:            req.TTL,
		ExplicitMaxTTL: maxTTL,
		Renewable:      maxTTL > req.TTL,
		DisplayName:    "latch-mint-" + req.Task,
		Meta:           LeaseMeta(req),
	})
	if err != nil {
		return broker.Prepared{}, fmt.Errorf("create mint token for lease %s: %w", req.LeaseID, err)
	}
	return broker.Prepared{
		Refs:       broker.Refs{MintAccessor: tok.Accessor},
		Credential: tok.Secret,
	}, nil
}

// LeaseMeta is the metadata latch attaches to what it creates in Vault, so
// an operator looking at a token in Vault can find its lease, agent and
// task.
func LeaseMeta(req broker.MintRequest) map[string]string {
	return map[string]string{
		"latch_lease": req.LeaseID,
		"latch_agent": req.Agent,
		"latch_task":  req.Task,
	}
}

// Cleanup runs a best-effort undo after a failed mint. It skips the undo
// when the failure says Vault is unavailable (the undo would fail the same
// way; the caller's revocation of the prepared refs will retry it), and
// gives the undo a short deadline of its own when ctx has already ended.
func Cleanup(ctx context.Context, mintErr error, undo func(context.Context) error) {
	if errors.Is(mintErr, broker.ErrBackendUnavailable) {
		return
	}
	if ctx.Err() != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
	}
	_ = undo(ctx)
}
