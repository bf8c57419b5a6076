package vault

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// A Vault that lacks a token role or a line of latch's policy lets latch
// start and then fails every mint. So latch checks, before it reports
// ready and in latch doctor, what it needs: its own token's capabilities
// (sys/capabilities-accessor), and per backend, tokens created through
// the backend's token roles the way the backend creates them (probes,
// revoked at once), with the capabilities their policies must give.

// PolicySection is where the README says how to set Vault up for latch.
const PolicySection = `README: "The Vault policy latch needs"`

// Problem is one thing latch needs of Vault that is missing.
type Problem struct {
	For  string // the part of latch that needs it: "latch", `backend "tokens" (vault-token)`
	What string // what is missing, naming it
	Fix  string // what to do, with the README section
}

func (p Problem) String() string { return p.For + ": " + p.What + "; " + p.Fix }

// Checker is a backend that can check Vault has what it needs.
type Checker interface {
	// Check returns what is missing for the backend to mint and revoke
	// with templates of max TTL maxTTL whose rendered paths (vault-lease)
	// are paths; the error says it could not check (Vault unreachable).
	Check(ctx context.Context, name string, maxTTL time.Duration, paths []string) ([]Problem, error)
}

// CheckOwn checks latch's own token: it may keep itself alive and look
// up, renew and revoke by accessor the tokens it creates.
func (c *Client) CheckOwn(ctx context.Context) ([]Problem, error) {
	return c.CheckCapabilities(ctx, "latch", map[string][]string{
		"auth/token/lookup-self":     {"read"},
		"auth/token/renew-self":      {"update"},
		"auth/token/lookup-accessor": {"update"},
		"auth/token/renew-accessor":  {"update"},
		"auth/token/revoke-accessor": {"update"},
	})
}

// CheckCapabilities checks that latch's own token has the capabilities
// want names, path by path; forWhat names who needs them.
func (c *Client) CheckCapabilities(ctx context.Context, forWhat string, want map[string][]string) ([]Problem, error) {
	return c.checkCapabilities(ctx, c.Accessor(), "latch's Vault token", forWhat, "add it to latch's policy ("+PolicySection+")", want)
}

func (c *Client) checkCapabilities(ctx context.Context, accessor, who, forWhat, fix string, want map[string][]string) ([]Problem, error) {
	paths := make([]string, 0, len(want))
	for p := range want {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	s, err := c.Write(ctx, "capabilities.accessor", "sys/capabilities-accessor", map[string]any{"accessor": accessor, "paths": paths})
	if StatusOf(err) == 403 {
		return []Problem{{For: "latch", What: `latch's Vault token lacks update on sys/capabilities-accessor, which latch checks its setup with`,
			Fix: "add it to latch's policy (" + PolicySection + ")"}}, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Problem
	for _, p := range paths {
		var have []string
		if s != nil {
			if list, ok := s.Data[p].([]any); ok {
				for _, v := range list {
					have = append(have, fmt.Sprint(v))
				}
			}
		}
		if missing := missingCaps(have, want[p]); len(missing) > 0 {
			out = append(out, Problem{For: forWhat, What: fmt.Sprintf("%s lacks %s on %s", who, strings.Join(missing, ", "), p), Fix: fix})
		}
	}
	return out, nil
}

// missingCaps is what of want have lacks; root has everything and deny
// nothing.
func missingCaps(have, want []string) []string {
	if slices.Contains(have, "root") {
		return nil
	}
	var out []string
	for _, w := range want {
		if !slices.Contains(have, w) || slices.Contains(have, "deny") {
			out = append(out, w)
		}
	}
	return out
}

// Probe creates a token as r says, for a check, hands it to fn, and
// revokes it (with its children) whatever fn found. A token Vault refuses
// to create is a Problem naming the role, not an error.
func (c *Client) Probe(ctx context.Context, forWhat string, r TokenRequest, fn func(Token) ([]Problem, error)) ([]Problem, error) {
	r.DisplayName = "latch-doctor"
	tok, err := c.CreateToken(ctx, "doctor.probe", r)
	if err != nil {
		if s := StatusOf(err); s == 400 || s == 403 || s == 404 {
			return []Problem{{For: forWhat, What: fmt.Sprintf("token role %s does not create the tokens latch needs: %v", r.Role, err),
				Fix: "create it as " + PolicySection + " shows"}}, nil
		}
		return nil, err
	}
	defer Cleanup(ctx, nil, func(ctx context.Context) error { return c.RevokeAccessor(ctx, tok.Accessor) })
	return fn(tok)
}

// ProbeCapabilities checks that tok (a probe) has the capabilities want
// names: what the policies its role gives must allow.
func (c *Client) ProbeCapabilities(ctx context.Context, forWhat, role string, tok Token, want map[string][]string) ([]Problem, error) {
	return c.checkCapabilities(ctx, tok.Accessor, "a token of role "+role+" (policies "+strings.Join(tok.Policies, ", ")+")",
		forWhat, "grant it in the policy the role gives ("+PolicySection+")", want)
}

// ProbeLifetime checks that a probe created for ttl got it: the role's
// token_explicit_max_ttl does not cut latch's tokens short.
func ProbeLifetime(forWhat, role string, tok Token, ttl time.Duration) []Problem {
	if tok.TTL+time.Second >= ttl {
		return nil
	}
	return []Problem{{For: forWhat, What: fmt.Sprintf("token role %s gives tokens %s where latch needs %s", role, tok.TTL, ttl),
		Fix: "raise the role's token_explicit_max_ttl to at least " + ttl.String() + " (" + PolicySection + ")"}}
}

// ProbeOrphan checks whether the probe with this accessor is an orphan
// as the role must make it.
func (c *Client) ProbeOrphan(ctx context.Context, forWhat, role, accessor string, orphan bool) ([]Problem, error) {
	data, err := c.lookupAccessor(ctx, accessor)
	if err != nil {
		return nil, err
	}
	if got, _ := data["orphan"].(bool); got != orphan {
		return []Problem{{For: forWhat, What: fmt.Sprintf("token role %s makes tokens with orphan=%t, latch needs orphan=%t", role, got, orphan),
			Fix: fmt.Sprintf("write the role with orphan=%t (%s)", orphan, PolicySection)}}, nil
	}
	return nil, nil
}
