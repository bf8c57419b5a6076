// Command latch is the one binary of the latch credential broker.
//
// It wires every package together (attest, templates, broker, the Vault
// backends) and holds the urfave/cli/v2 command tree and the config file
// schema. Only this package imports everything.
//
//	latch --help
//	latch --version
package main
