// Command crashchild runs broker.Service the way latch's server does — a
// bbolt store, the real Vault backends (built by backends/catalog from a
// backends: section, as latch builds them), latch's own AppRole login — minus
// the HTTP API, for the kill -9 tests of integration/broker. The tests
// build it with -tags failpoints and set LATCH_FAILPOINT so that it kills
// itself at one point of an issue or a bulk revocation; then they start it
// again without the failpoint to reconcile.
//
//	crashchild -config c.json -op issue -req 'close-ticket ticket=42' -req ...
//	crashchild -config c.json -op revoke-all
//	crashchild -config c.json -op reconcile
//
// It prints one JSON line per lease it issued ({"lease": ID, "task": T})
// and never a secret.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/latchbroker/latch/backends/catalog"
	"github.com/latchbroker/latch/backends/vault"
	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/boltstore"
	"github.com/latchbroker/latch/templates"
)

// Config is what the test hands the child: where the store and Vault are,
// and the policy, templates and backends it serves.
type Config struct {
	DB           string            `json:"db"`
	VaultAddr    string            `json:"vault_addr"`
	RoleIDFile   string            `json:"role_id_file"`
	SecretIDFile string            `json:"secret_id_file"`
	Policy       string            `json:"policy"`
	Templates    map[string]string `json:"templates"`
	// Backends is latch.yaml's backends: section, as YAML text.
	Backends string `json:"backends"`
}

type reqFlags []string

func (r *reqFlags) String() string     { return strings.Join(*r, "; ") }
func (r *reqFlags) Set(v string) error { *r = append(*r, v); return nil }

func main() {
	var (
		cfgPath = flag.String("config", "", "the test's JSON config")
		op      = flag.String("op", "", "issue, revoke-all or reconcile")
		agent   = flag.String("agent", "", "the agent issuing (op issue)")
		reqs    reqFlags
	)
	flag.Var(&reqs, "req", "a request to issue: 'task key=value ...' (repeatable)")
	flag.Parse()
	if err := run(*cfgPath, *op, *agent, reqs); err != nil {
		fmt.Fprintln(os.Stderr, "crashchild:", err)
		os.Exit(1)
	}
}

func run(cfgPath, op, agent string, reqs []string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		return err
	}
	var cfg Config
	if err := json.Unmarshal(b, &cfg); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))

	store, err := boltstore.Open(cfg.DB, boltstore.Options{})
	if err != nil {
		return err
	}
	defer store.Close()
	vc, err := vault.New(vault.Config{
		// An installation of its own: the test process shares the Vault
		// with its own backends, whose shared policies this one's
		// collection must not touch (as two latches sharing a Vault).
		Owner:        "crashchild",
		Address:      cfg.VaultAddr,
		Timeout:      3 * time.Second,
		MaxRetries:   2,
		RetryWaitMin: 50 * time.Millisecond,
		RetryWaitMax: 250 * time.Millisecond,
		Auth:         vault.AuthConfig{Method: vault.AuthAppRole, RoleIDFile: cfg.RoleIDFile, SecretIDFile: cfg.SecretIDFile},
		Logger:       log,
	})
	if err != nil {
		return err
	}
	defer vc.Close()
	if err := vc.Login(ctx); err != nil {
		return err
	}
	go func() { _ = vc.Run(ctx) }()
	set, err := catalog.Parse("latch.yaml", []byte(cfg.Backends))
	if err != nil {
		return err
	}
	backends, err := set.Build(vc)
	if err != nil {
		return err
	}
	policy, err := loadPolicy(cfg, set.Templates())
	if err != nil {
		return err
	}
	svc, err := broker.NewService(ctx, broker.Config{
		Store:       store,
		Policy:      policy,
		Backends:    backends,
		Logger:      log,
		RetryBase:   200 * time.Millisecond,
		RetryMax:    2 * time.Second,
		MaxAttempts: 100,
	})
	if err != nil {
		return err
	}

	switch op {
	case "issue":
		return issue(ctx, svc, agent, reqs)
	case "revoke-all":
		if _, err := svc.Leases().Revoke(ctx, "spiffe://example.org/ops/alice", "crash test: revoke all", broker.RevokeSelector{All: true}); err != nil {
			return err
		}
		return runUntilDone(ctx, svc, store)
	case "reconcile":
		return runUntilDone(ctx, svc, store)
	}
	return fmt.Errorf("unknown -op %q", op)
}

func issue(ctx context.Context, svc *broker.Service, agent string, reqs []string) error {
	out := json.NewEncoder(os.Stdout)
	for _, r := range reqs {
		words := strings.Fields(r)
		if len(words) == 0 {
			return errors.New("empty -req")
		}
		params := map[string]string{}
		for _, kv := range words[1:] {
			k, v, _ := strings.Cut(kv, "=")
			params[k] = v
		}
		res, err := svc.Issue(ctx, broker.IssueRequest{Agent: agent, Task: words[0], Params: params, Reason: "crash test"})
		if err != nil {
			return fmt.Errorf("issue %s: %w", r, err)
		}
		if err := out.Encode(map[string]string{"lease": res.Lease.ID, "task": res.Lease.Task}); err != nil {
			return err
		}
	}
	return nil
}

// runUntilDone runs the service as the server does — Run reconciles, then
// sweeps and works the revocation queue — until nothing is left to do.
func runUntilDone(ctx context.Context, svc *broker.Service, store broker.Store) error {
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx, ready) }()
	select {
	case <-ready:
	case err := <-done:
		return fmt.Errorf("run: %w", err)
	}
	for {
		n, err := store.QueueDepth(ctx)
		if err != nil {
			return err
		}
		intents, err := store.Intents(ctx)
		if err != nil {
			return err
		}
		if n == 0 && len(intents) == 0 {
			stop()
			return <-done
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d revocations still queued and %d intents open: %w", n, len(intents), ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func loadPolicy(cfg Config, backends map[string]templates.Backend) (*templates.Policy, error) {
	pc, err := templates.ParsePolicy("latch.yaml", []byte(cfg.Policy))
	if err != nil {
		return nil, err
	}
	src := templates.Source{Policy: pc, Backends: backends}
	for name, body := range cfg.Templates {
		src.Templates = append(src.Templates, templates.File{Name: name, Data: []byte(body)})
	}
	return templates.Load(src)
}
