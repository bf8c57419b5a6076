// Package backends tests latch's Vault backends end to end against the real
// Vault and PostgreSQL of the integration stack. Root is used only to set
// Vault up — mounts, engine roles, and the policies and token roles read
// from README.md's "The Vault policy latch needs". Every backend call runs
// through latch's own client, logged in with AppRole and exactly that
// policy.
package backends

import (
	"os"
	"testing"

	"github.com/latchbroker/latch/integration/stack"
)

var st *stack.Stack

func TestMain(m *testing.M) {
	os.Exit(stack.Main(m, stack.WithVault|stack.WithPostgres, &st))
}
