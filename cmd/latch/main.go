// Command latch is the credential broker's one binary: server, agent-side
// fetch and exec, and the operator CLI. See doc.go.
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
)

// version is set at build time: -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if err := newApp().Run(os.Args); err != nil {
		if msg := err.Error(); msg != "" {
			fmt.Fprintln(os.Stderr, "latch:", msg)
		}
		os.Exit(exitCode(err))
	}
}

// newApp builds the command tree. Every command lives in a file of its own
// and is listed here, so this list is the one place to see what latch does.
func newApp() *cli.App {
	return &cli.App{
		Name:    "latch",
		Usage:   "credential broker for autonomous agents",
		Version: version,
		Description: "latch verifies an agent's SPIFFE identity, checks the task template,\n" +
			"freeze windows, agent state and risk tier, then mints a short-lived\n" +
			"secret through HashiCorp Vault and records the lease for audit and revocation.",
		HideHelpCommand: true,
		Commands: []*cli.Command{
			checkCommand(),
			doctorCommand(),
			explainCommand(),
			serverCommand(),
			approvalCommand(),
			auditCommand(),
			storeCommand(),
			fetchCommand(),
			execCommand(),
			mcpCommand(),
			leaseCommand(),
			revokeCommand(),
			agentCommand(),
			freezeCommand(),
			reportCommand(),
			loginCommand(),
			logoutCommand(),
			whoamiCommand(),
		},
	}
}

// exitCode maps an error to the process exit status; cli.ExitCoder errors
// carry their own.
func exitCode(err error) int {
	if ec, ok := err.(cli.ExitCoder); ok {
		return ec.ExitCode()
	}
	return 1
}
