package integration

import (
	"os"
	"testing"

	"github.com/latchbroker/latch/integration/stack"
)

// st is the one stack every test in this package shares.
var st *stack.Stack

func TestMain(m *testing.M) {
	os.Exit(stack.Main(m, stack.All|stack.WithEtcd, &st))
}
