// Package mcp is latch's MCP server: it lets an LLM agent (through its
// MCP client) ask for credentials and use them without ever seeing one.
// It runs as the agent, with the agent's own SVID, over stdio, and offers
// three tools:
//
//   - list_tasks: the tasks this agent may ask for and the commands the
//     configuration lets each run;
//   - run_with_credential: issue a credential for a task, run one of the
//     configured commands with it in the command's environment only, end
//     the lease when the command ends, and return the exit status and
//     output with every value of the secret redacted;
//   - request_status: the state of a request that waits for approval.
//
// The configuration says which tasks are offered and which commands each
// may run, with a pattern for every argument the model supplies: a
// command or an argument outside it is refused before any credential is
// issued. Denials come back as tool errors with the reasons an agent may
// see.
package mcp
