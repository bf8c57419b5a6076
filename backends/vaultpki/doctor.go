package vaultpki

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/latchbroker/latch/backends/vault"
)

var _ vault.Checker = (*Backend)(nil)

// Check implements vault.Checker: the mount has a CA; latch's token may
// create mint tokens and revoke the mount's certificates; a mint token,
// created as Prepare creates them, is an orphan that lives long enough
// and may issue from the role.
func (b *Backend) Check(ctx context.Context, name string, maxTTL time.Duration, _ []string) ([]vault.Problem, error) {
	forWhat := fmt.Sprintf("backend %q (vault-pki)", name)
	ca := b.cfg.Mount + "/cert/ca"
	s, err := b.c.Do(ctx, vault.Request{Op: "doctor.pki-ca", Method: http.MethodGet, Path: ca, NoAuth: true})
	if st := vault.StatusOf(err); err != nil && (st < 400 || st >= 500) {
		return nil, err
	}
	var cert string
	if s != nil {
		cert, _ = s.Data["certificate"].(string)
	}
	if cert == "" {
		why := "it has no CA certificate"
		if err != nil {
			why = err.Error()
		}
		return []vault.Problem{{For: forWhat, What: fmt.Sprintf("no CA at %s (%s): no PKI engine mounted at %s, or it has no issuer", ca, why, b.cfg.Mount),
			Fix: "mount the pki engine there and generate or import its CA"}}, nil
	}
	role := b.cfg.TokenRole
	probs, err := b.c.CheckCapabilities(ctx, forWhat, map[string][]string{
		"auth/token/create/" + role: {"update"},
		b.cfg.Mount + "/revoke":     {"update"},
	})
	if err != nil || len(probs) > 0 {
		return probs, err
	}
	return b.c.Probe(ctx, forWhat, vault.TokenRequest{Role: role, TTL: maxTTL, ExplicitMaxTTL: maxTTL},
		func(tok vault.Token) ([]vault.Problem, error) {
			probs := vault.ProbeLifetime(forWhat, role, tok, maxTTL)
			orphan, err := b.c.ProbeOrphan(ctx, forWhat, role, tok.Accessor, true)
			if err != nil {
				return nil, err
			}
			caps, err := b.c.ProbeCapabilities(ctx, forWhat, role, tok, map[string][]string{b.cfg.Mount + "/issue/" + b.cfg.Role: {"update"}})
			return append(append(probs, orphan...), caps...), err
		})
}
