package main

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/urfave/cli/v2"

	"github.com/latchbroker/latch/backends/vault"
	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/templates"
)

// maxCheckedPaths bounds the rendered paths latch checks per template.
const maxCheckedPaths = 64

// setupCheck is one part of latch's Vault setup, checked.
type setupCheck struct {
	Name     string
	Problems []vault.Problem
	Skipped  string // why it was not checked, when it was not
}

// checkSetup checks what latch needs of Vault: its own token, then each
// backend with the longest max TTL of its templates and, for vault-lease,
// the paths they render. The error says Vault could not be asked.
func checkSetup(ctx context.Context, v *vault.Client, backends map[string]broker.Backend, p *templates.Policy) ([]setupCheck, error) {
	own, err := v.CheckOwn(ctx)
	if err != nil {
		return nil, fmt.Errorf("check latch's Vault token: %w", err)
	}
	out := []setupCheck{{Name: "latch's Vault token", Problems: own}}
	names := make([]string, 0, len(backends))
	for name := range backends {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		c := setupCheck{Name: fmt.Sprintf("backend %q", name)}
		checker, ok := backends[name].(vault.Checker)
		maxTTL, paths, used := backendUse(p, name)
		switch {
		case len(own) > 0:
			c.Skipped = "latch's own token first"
		case !ok:
			c.Skipped = "this backend type has no check"
		case !used:
			c.Skipped = "no template uses it"
		default:
			if c.Problems, err = checker.Check(ctx, name, maxTTL, paths); err != nil {
				return nil, fmt.Errorf("check backend %s: %w", name, err)
			}
		}
		out = append(out, c)
	}
	return out, nil
}

// backendUse is the longest max TTL of the templates on a backend, and
// the paths they render where they can all be listed.
func backendUse(p *templates.Policy, backend string) (maxTTL time.Duration, paths []string, used bool) {
	for _, t := range p.Templates() {
		if t.Backend != backend {
			continue
		}
		used = true
		maxTTL = max(maxTTL, t.MaxTTL)
		ps, ok := t.Paths(maxCheckedPaths)
		if ok {
			paths = append(paths, ps...)
		}
	}
	slices.Sort(paths)
	return maxTTL, slices.Compact(paths), used
}

// problemsOf flattens the checks' problems.
func problemsOf(checks []setupCheck) []vault.Problem {
	var out []vault.Problem
	for _, c := range checks {
		out = append(out, c.Problems...)
	}
	return out
}

func doctorCommand() *cli.Command {
	return &cli.Command{
		Name:      "doctor",
		Usage:     "check that Vault has everything latch needs: its policy, token roles, mounts",
		UsageText: "latch doctor --config FILE",
		Description: "Logs in to Vault as latch server does, with the config's vault.auth, and\n" +
			"checks what latch needs to mint and revoke: its own token's capabilities\n" +
			"(sys/capabilities-accessor), and for each backend a token created through\n" +
			"its token roles as latch creates them (revoked at once): orphan or child as\n" +
			"latch needs, living as long as the templates' longest max_ttl needs, with\n" +
			"the capabilities the roles' policies must give (every path a vault-lease\n" +
			"template renders from its enum parameters; a PKI mount's CA and role).\n" +
			"latch server runs the same checks at start and is not ready until they pass.\n\n" +
			"Prints each part ok, or what is missing and the README section that fixes\n" +
			"it; exits 0 when everything is in place, 1 otherwise. Run it where latch\n" +
			"runs: it reads latch's Vault credentials.",
		Flags:  []cli.Flag{configFlagFor()},
		Action: runDoctor,
	}
}

func runDoctor(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	cfg, err := LoadConfig(c.String("config"))
	if err != nil {
		return printConfigErrors(c, err)
	}
	ctx, cancel := context.WithTimeout(c.Context, time.Minute)
	defer cancel()
	log := slog.New(slog.DiscardHandler)
	var jwt vault.JWTSource
	if cfg.Vault.Auth.Method == vault.AuthJWT {
		id, err := spiffeid.FromString(cfg.Server.ID)
		if err != nil {
			return fmt.Errorf("server.id: %w", err)
		}
		src, err := openSource(ctx, cfg, id, log)
		if err != nil {
			return err
		}
		defer src.Close()
		jwt = func(ctx context.Context) (string, error) {
			svid, err := src.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "vault"})
			if err != nil {
				return "", err
			}
			return svid.Marshal(), nil
		}
	}
	v, err := openVault(ctx, cfg, log, nil, jwt)
	if err != nil {
		return err
	}
	defer v.Close()
	backends, err := cfg.backends.Build(v)
	if err != nil {
		return err
	}
	checks, err := checkSetup(ctx, v, backends, cfg.Policy)
	if err != nil {
		return err
	}
	tw := newTable(c.App.Writer)
	for _, ch := range checks {
		switch {
		case ch.Skipped != "":
			fmt.Fprintf(tw, "%s\tnot checked: %s\n", ch.Name, ch.Skipped)
		case len(ch.Problems) == 0:
			fmt.Fprintf(tw, "%s\tok\n", ch.Name)
		default:
			fmt.Fprintf(tw, "%s\tMISSING\n", ch.Name)
			for _, p := range ch.Problems {
				fmt.Fprintf(tw, "\t- %s;\n\t  %s\n", p.What, p.Fix)
			}
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if n := len(problemsOf(checks)); n > 0 {
		return fmt.Errorf("vault: %d thing%s latch needs %s missing", n, map[bool]string{true: "", false: "s"}[n == 1], map[bool]string{true: "is", false: "are"}[n == 1])
	}
	fmt.Fprintf(c.App.Writer, "everything latch needs is in Vault at %s\n", strings.TrimSuffix(cfg.Vault.Address, "/"))
	return nil
}
