package server

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/latchbroker/latch/integration/stack"
)

var (
	st *stack.Stack
	// latchBin is the latch binary built from this checkout.
	latchBin string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "latch-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		os.Exit(1)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		if latchBin, err = buildLatch(dir); err != nil {
			fmt.Fprintln(os.Stderr, "FAIL:", err)
			return 1
		}
		return stack.Main(m, stack.All|stack.WithEtcd, &st)
	}()
	os.Exit(code)
}

// buildLatch builds ./cmd/latch of the repository this package is in.
func buildLatch(dir string) (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "latch")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/latch")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/latch: %v\n%s", err, out)
	}
	return bin, nil
}

// repoRoot is the nearest directory upward from the working directory
// with latch's go.mod (tests run in their package directory).
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.HasPrefix(string(b), "module github.com/latchbroker/latch\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("cannot find latch's repository root above the working directory")
		}
		dir = parent
	}
}
