package vault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/latchbroker/latch/broker"
)

// TokenRequest creates a token through a token role
// (auth/token/create/<role>). The role decides what a non-root creator may
// do: which policies (allowed_policies, allowed_policies_glob), orphan, and
// a ceiling on explicit_max_ttl; latch's own policy needs only update on
// that one path.
type TokenRequest struct {
	Role string
	// Policies are the token's policies; empty means the role's
	// allowed_policies. The default policy is never attached.
	Policies []string
	// TTL is the token's TTL; ExplicitMaxTTL the hard limit that no
	// renewal passes (0: the role's or the system's).
	TTL, ExplicitMaxTTL time.Duration
	Renewable           bool
	// DisplayName appears in Vault's audit log (Vault prefixes "token-").
	DisplayName string
	// Meta is stored with the token and shown by lookups and audit logs.
	Meta map[string]string
	// Parent, when set, creates the token as a child of this token
	// (the role must not be orphan): revoking the parent revokes it.
	// Zero means latch's own token.
	Parent broker.Secret
}

// Token is a token Vault created.
type Token struct {
	// Secret holds the token value as field "token".
	Secret    broker.Secret
	Accessor  string
	TTL       time.Duration
	Renewable bool
	Policies  []string
}

// CreateToken creates a token (op names the call for metrics).
func (c *Client) CreateToken(ctx context.Context, op string, r TokenRequest) (Token, error) {
	if r.Role == "" {
		return Token{}, errors.New("vault: create token: no token role")
	}
	body := tokenCreateBody{
		// The default policy grants things like cubbyhole and
		// sys/capabilities-self that a task token has no use for.
		NoDefaultPolicy: true,
		Renewable:       r.Renewable,
		TTL:             Seconds(r.TTL),
		Type:            "service", // batch tokens cannot be revoked
		Policies:        r.Policies,
		DisplayName:     r.DisplayName,
		Meta:            r.Meta,
	}
	if r.ExplicitMaxTTL > 0 {
		body.ExplicitMaxTTL = Seconds(r.ExplicitMaxTTL)
	}
	var out tokenCreated
	path := "auth/token/create/" + r.Role
	if _, err := c.Do(ctx, Request{Op: op, Method: http.MethodPut, Path: path, Data: &body, Token: r.Parent, Into: &out}); err != nil {
		return Token{}, err
	}
	a := out.Auth
	if a == nil || a.ClientToken == "" {
		return Token{}, &Error{Op: op, Path: path, Messages: []string{"Vault returned no token"}}
	}
	return Token{
		Secret:    broker.NewSecret(map[string]string{"token": a.ClientToken}),
		Accessor:  a.Accessor,
		TTL:       time.Duration(a.LeaseDuration) * time.Second,
		Renewable: a.Renewable,
		Policies:  a.Policies,
	}, nil
}

// tokenCreateBody is the body of auth/token/create/<role>.
type tokenCreateBody struct {
	NoDefaultPolicy bool              `json:"no_default_policy"`
	Renewable       bool              `json:"renewable"`
	TTL             string            `json:"ttl"`
	Type            string            `json:"type"`
	Policies        []string          `json:"policies,omitempty"`
	ExplicitMaxTTL  string            `json:"explicit_max_ttl,omitempty"`
	DisplayName     string            `json:"display_name,omitempty"`
	Meta            map[string]string `json:"meta,omitempty"`
}

// tokenCreated is the part of Vault's answer to a token create that latch
// reads.
type tokenCreated struct {
	Auth *struct {
		ClientToken   string   `json:"client_token"`
		Accessor      string   `json:"accessor"`
		Policies      []string `json:"policies"`
		LeaseDuration int64    `json:"lease_duration"`
		Renewable     bool     `json:"renewable"`
	} `json:"auth"`
}

// RevokeAccessor revokes the token with this accessor and, with it, its
// child tokens and every lease it created. A token that is already gone
// counts as revoked.
func (c *Client) RevokeAccessor(ctx context.Context, accessor string) error {
	_, err := c.Write(ctx, "token.revoke-accessor", "auth/token/revoke-accessor", map[string]any{"accessor": accessor})
	if err != nil && isInvalidAccessor(err) {
		return nil
	}
	return err
}

// lookupAccessor returns the data of the token with this accessor:
// Vault's error when it is gone (see isInvalidAccessor).
func (c *Client) lookupAccessor(ctx context.Context, accessor string) (map[string]any, error) {
	info, err := c.Write(ctx, "token.lookup-accessor", "auth/token/lookup-accessor", map[string]any{"accessor": accessor})
	if err != nil {
		return nil, err
	}
	if info == nil || info.Data == nil {
		return nil, &Error{Op: "token.lookup-accessor", Path: "auth/token/lookup-accessor", Messages: []string{"Vault returned no token data"}}
	}
	return info.Data, nil
}

// LookupAccessor reports whether the token with this accessor still exists.
func (c *Client) LookupAccessor(ctx context.Context, accessor string) (alive bool, err error) {
	_, err = c.lookupAccessor(ctx, accessor)
	switch {
	case err == nil:
		return true, nil
	case isInvalidAccessor(err):
		return false, nil
	}
	return false, err
}

// RenewAccessor renews the token with this accessor by increment and
// returns the TTL granted. It never renews past the token's own
// explicit_max_ttl: Vault applies only the token role's
// token_explicit_max_ttl when renewing a token created through a role, so
// the per-token limit (the lease's max TTL) is enforced here, from the
// token's creation time. A token that is gone, not renewable or at its max
// TTL yields broker.ErrNotRenewable.
func (c *Client) RenewAccessor(ctx context.Context, accessor string, increment time.Duration) (time.Duration, error) {
	data, err := c.lookupAccessor(ctx, accessor)
	if err != nil {
		if isInvalidAccessor(err) {
			return 0, fmt.Errorf("%w: token is gone", broker.ErrNotRenewable)
		}
		return 0, err
	}
	if renewable, _ := data["renewable"].(bool); !renewable {
		return 0, fmt.Errorf("%w: the token was created non-renewable", broker.ErrNotRenewable)
	}
	if maxTTL, created := number(data["explicit_max_ttl"]), number(data["creation_time"]); maxTTL > 0 && created > 0 {
		left := time.Unix(created+maxTTL, 0).Sub(c.cfg.Now())
		if left < time.Second {
			return 0, fmt.Errorf("%w: the token reached its max TTL", broker.ErrNotRenewable)
		}
		increment = min(increment, left.Truncate(time.Second))
	}
	s, err := c.Write(ctx, "token.renew-accessor", "auth/token/renew-accessor",
		map[string]any{"accessor": accessor, "increment": Seconds(increment)})
	if err != nil {
		if isInvalidAccessor(err) {
			return 0, fmt.Errorf("%w: token is gone", broker.ErrNotRenewable)
		}
		var e *Error
		if errors.As(err, &e) && e.Status == http.StatusBadRequest && e.HasMessage("not renewable") {
			return 0, fmt.Errorf("%w: %v", broker.ErrNotRenewable, err)
		}
		return 0, err
	}
	if s == nil || s.Auth == nil {
		return 0, &Error{Op: "token.renew-accessor", Path: "auth/token/renew-accessor", Messages: []string{"Vault returned no auth data"}}
	}
	return time.Duration(s.Auth.LeaseDuration) * time.Second, nil
}

// number reads a JSON number Vault returned (json.Number), or 0.
func number(v any) int64 {
	if n, ok := v.(json.Number); ok {
		i, _ := n.Int64()
		return i
	}
	return 0
}

// isInvalidAccessor recognises Vault's answer for an accessor whose token
// no longer exists (400 "invalid accessor").
func isInvalidAccessor(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == http.StatusBadRequest && e.HasMessage("invalid accessor")
}

// RevokeLease revokes a Vault lease and waits until the engine has
// destroyed the secret (sys/leases/revoke/<id>, sync). The lease ID goes
// into the path, not the body, so latch's policy can allow revocation per
// engine prefix (sys/leases/revoke/database/creds/*) instead of for every
// lease in Vault. A lease that is already gone counts as revoked.
func (c *Client) RevokeLease(ctx context.Context, leaseID string) error {
	p, err := CleanPath(leaseID)
	if err != nil {
		return fmt.Errorf("vault: revoke lease: %w", err)
	}
	_, err = c.Write(ctx, "lease.revoke", "sys/leases/revoke/"+p, map[string]any{"sync": true})
	return err
}

// ListLeases lists the IDs, without prefix, of the Vault leases under
// prefix (sys/leases/lookup/<prefix>, a LIST; prefix ends with a slash).
// None is no error.
func (c *Client) ListLeases(ctx context.Context, prefix string) ([]string, error) {
	p, err := CleanPath(strings.TrimSuffix(prefix, "/"))
	if err != nil {
		return nil, fmt.Errorf("vault: list leases: %w", err)
	}
	s, err := c.Do(ctx, Request{Op: "lease.list", Method: "LIST", Path: "sys/leases/lookup/" + p + "/"})
	if StatusOf(err) == http.StatusNotFound {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	if s != nil {
		keys, _ := s.Data["keys"].([]any)
		for _, k := range keys {
			if id, ok := k.(string); ok {
				out = append(out, id)
			}
		}
	}
	return out, nil
}

// LookupLease reports whether a Vault lease still exists, and when it
// expires.
func (c *Client) LookupLease(ctx context.Context, leaseID string) (alive bool, expires time.Time, err error) {
	s, err := c.Write(ctx, "lease.lookup", "sys/leases/lookup", map[string]any{"lease_id": leaseID})
	if err != nil {
		var e *Error
		if errors.As(err, &e) && e.Status == http.StatusBadRequest && e.HasMessage("invalid lease") {
			return false, time.Time{}, nil
		}
		return false, time.Time{}, err
	}
	if s != nil {
		if v, ok := s.Data["expire_time"].(string); ok && v != "" {
			expires, _ = time.Parse(time.RFC3339Nano, v)
		}
	}
	return true, expires, nil
}

// RenewLease renews a Vault lease by increment (sys/leases/renew/<id>) and
// returns the TTL granted, which the engine may cap.
func (c *Client) RenewLease(ctx context.Context, leaseID string, increment time.Duration) (time.Duration, error) {
	p, err := CleanPath(leaseID)
	if err != nil {
		return 0, fmt.Errorf("vault: renew lease: %w", err)
	}
	s, err := c.Write(ctx, "lease.renew", "sys/leases/renew/"+p, map[string]any{"increment": Seconds(increment)})
	if err != nil {
		return 0, err
	}
	if s == nil {
		return 0, &Error{Op: "lease.renew", Path: "sys/leases/renew/" + p, Messages: []string{"Vault returned no lease"}}
	}
	if !s.Renewable && s.LeaseDuration == 0 {
		return 0, broker.ErrNotRenewable
	}
	return time.Duration(s.LeaseDuration) * time.Second, nil
}

// Seconds formats d for Vault duration fields: whole seconds, rounded up so
// a sub-second TTL does not become 0 (which Vault reads as "default").
func Seconds(d time.Duration) string {
	s := int64((d + time.Second - 1) / time.Second)
	return strconv.FormatInt(s, 10) + "s"
}
