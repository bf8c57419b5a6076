package broker

import (
	"os"
	"testing"

	"github.com/latchbroker/latch/integration/stack"
)

var st *stack.Stack

func TestMain(m *testing.M) {
	os.Exit(stack.Main(m, stack.WithPersistentVault|stack.WithPostgres, &st))
}
