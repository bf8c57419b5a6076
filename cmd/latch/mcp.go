package main

import (
	"log/slog"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/urfave/cli/v2"

	"github.com/latchbroker/latch/mcp"
)

func mcpCommand() *cli.Command {
	return &cli.Command{
		Name:  "mcp",
		Usage: "serve an LLM agent's MCP client over stdio: tasks, and commands run with credentials the model never sees",
		Description: "Runs as the agent, with the agent's SVID, and speaks the Model Context Protocol on\n" +
			"stdin and stdout. Tools: list_tasks, run_with_credential (issue, run a configured\n" +
			"command with the secret in its environment, end the lease, return the output with\n" +
			"every secret value redacted), request_status (a request waiting for approval).\n" +
			"--config names the file of the tasks offered and the commands each may run; see\n" +
			"the README's MCP section. Logs go to stderr." + connHelp,
		Flags: append(connFlags(false), &cli.StringFlag{Name: "config", Required: true, Usage: "the MCP server's `FILE` (tasks and commands)"}),
		Action: remote(func(c *cli.Context, _ []string, connect connector) error {
			cfg, err := mcp.Load(c.String("config"))
			if err != nil {
				return err
			}
			cl, err := connect()
			if err != nil {
				return err
			}
			log := slog.New(slog.NewTextHandler(c.App.ErrWriter, nil))
			return mcp.New(cfg, cl, log).Run(c.Context, &sdk.StdioTransport{})
		}),
	}
}
