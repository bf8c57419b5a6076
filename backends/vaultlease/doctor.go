package vaultlease

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/latchbroker/latch/backends/vault"
)

var _ vault.Checker = (*Backend)(nil)

// Check implements vault.Checker: latch's token may create mint tokens and
// look up, renew, list and revoke the leases under each rendered path (or
// under the path's prefix, when no template's paths can be listed); a
// mint token, created as a group's is, is an orphan that lives long
// enough and may read every rendered path.
func (b *Backend) Check(ctx context.Context, name string, maxTTL time.Duration, paths []string) ([]vault.Problem, error) {
	forWhat := fmt.Sprintf("backend %q (vault-lease)", name)
	want := map[string][]string{
		"auth/token/create/" + b.cfg.TokenRole: {"update"},
		"sys/leases/lookup":                    {"update"},
	}
	leases := paths
	if len(leases) == 0 {
		leases = []string{strings.TrimSuffix(b.cfg.Prefix(), "/")}
	}
	for _, p := range leases {
		want["sys/leases/renew/"+p+"/doctor"] = []string{"update"}
		want["sys/leases/revoke/"+p+"/doctor"] = []string{"update"}
		want["sys/leases/lookup/"+p+"/"] = []string{"list", "sudo"}
	}
	probs, err := b.c.CheckCapabilities(ctx, forWhat, want)
	if err != nil || len(probs) > 0 {
		return probs, err
	}
	role, ttl := b.groups.Role(), b.groups.ParentTTL(maxTTL)
	return b.c.Probe(ctx, forWhat, vault.TokenRequest{Role: role, TTL: ttl, ExplicitMaxTTL: ttl},
		func(tok vault.Token) ([]vault.Problem, error) {
			probs := vault.ProbeLifetime(forWhat, role, tok, ttl)
			orphan, err := b.c.ProbeOrphan(ctx, forWhat, role, tok.Accessor, true)
			if err != nil {
				return nil, err
			}
			read := map[string][]string{}
			for _, p := range paths {
				read[p] = []string{"read"}
			}
			if len(read) == 0 {
				return append(probs, orphan...), nil
			}
			caps, err := b.c.ProbeCapabilities(ctx, forWhat, role, tok, read)
			return append(append(probs, orphan...), caps...), err
		})
}
