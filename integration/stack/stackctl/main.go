// Command stackctl starts latch's integration stack (Vault, SPIRE server and
// agent, PostgreSQL) outside of tests, for `make demo` and `make up`.
//
//	stackctl demo LATCH   start the stack, run latch's main job on it with the
//	                      latch binary LATCH, stop everything
//	stackctl up           start the stack and keep it running until Ctrl-C
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/latchbroker/latch/integration/stack"
)

func main() {
	if !(len(os.Args) == 3 && (os.Args[1] == "demo" || os.Args[1] == "demo-ha")) && !(len(os.Args) == 2 && os.Args[1] == "up") {
		fmt.Fprintln(os.Stderr, "usage: stackctl demo LATCH-BINARY | stackctl demo-ha LATCH-BINARY | stackctl up")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[len(os.Args)-1]); err != nil {
		fmt.Fprintln(os.Stderr, "stackctl:", err)
		os.Exit(1)
	}
}

func run(mode, latchBin string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	fmt.Println("starting Vault, SPIRE server + agent and PostgreSQL on 127.0.0.1 ...")
	startCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	what := stack.All
	if mode == "demo-ha" {
		fmt.Println("... and a 3-member etcd cluster")
		what |= stack.WithEtcd
	}
	s, err := stack.Start(startCtx, what)
	cancel()
	if err != nil {
		return err
	}
	defer func() {
		s.Close()
		fmt.Println("stack stopped")
	}()

	if err := describe(ctx, s); err != nil {
		return err
	}
	switch mode {
	case "demo":
		return runDemo(ctx, s, latchBin)
	case "demo-ha":
		return runDemoHA(ctx, s, latchBin)
	}
	fmt.Println("\nthe stack is up; press Ctrl-C to stop it")
	<-ctx.Done()
	return nil
}

func describe(ctx context.Context, s *stack.Stack) error {
	vaultVersion, err := s.Vault.Version(ctx)
	if err != nil {
		return err
	}
	spireVersion, err := s.SPIRE.Version(ctx)
	if err != nil {
		return err
	}
	pgVersion, err := s.Postgres.Version(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("\n%-14s %-16s %s\n", "COMPONENT", "VERSION", "ADDRESS")
	fmt.Printf("%-14s %-16s %s (root token %s)\n", "vault", vaultVersion, s.Vault.Addr, s.Vault.RootToken)
	fmt.Printf("%-14s %-16s %s (trust domain %s)\n", "spire-server", spireVersion, s.SPIRE.ServerAddr, stack.TrustDomain.Name())
	fmt.Printf("%-14s %-16s %s\n", "spire-agent", spireVersion, s.SPIRE.WorkloadAPIAddr())
	fmt.Printf("%-14s %-16s %s (superuser %s)\n", "postgresql", pgVersion, s.Postgres.Addr(), s.Postgres.User)
	fmt.Printf("\nexport VAULT_ADDR=%s VAULT_TOKEN=%s SPIFFE_ENDPOINT_SOCKET=%s\n",
		s.Vault.Addr, s.Vault.RootToken, s.SPIRE.WorkloadAPIAddr())
	return nil
}
