package stack

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

// Versions of the components `make tools` builds; the smoke tests check the
// running servers report them.
const (
	VaultVersion = "1.21.0"
	SPIREVersion = "1.13.3"
	EtcdVersion  = "3.7.3"
)

// ErrToolMissing is returned when a binary the stack needs is not installed.
// Its message tells the reader how to install it.
var ErrToolMissing = errors.New("run 'make tools'")

// toolsDir finds the .tools/bin folder: $LATCH_TOOLS_BIN, or .tools/bin in
// the nearest directory upward from the working directory that has a go.mod
// for latch (tests run in their package directory).
func toolsDir() (string, error) {
	if d := os.Getenv("LATCH_TOOLS_BIN"); d != "" {
		return d, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			if _, err := os.Stat(filepath.Join(dir, "tools")); err == nil {
				return filepath.Join(dir, ".tools", "bin"), nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("stack: cannot find latch's repository root above the working directory; set LATCH_TOOLS_BIN or %w", ErrToolMissing)
		}
		dir = parent
	}
}

// tool returns the path of an executable in .tools/bin.
func tool(name string) (string, error) {
	dir, err := toolsDir()
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, name)
	if st, err := os.Stat(p); err != nil || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("stack: %s not found at %s: %w", name, p, ErrToolMissing)
	}
	return p, nil
}

// postgresBinDir returns the server binaries of the newest PostgreSQL
// installed from Debian's packages.
func postgresBinDir() (string, error) {
	if d := os.Getenv("LATCH_POSTGRES_BIN"); d != "" {
		return d, nil
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	if len(matches) == 0 {
		return "", fmt.Errorf("stack: PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: %w (it runs apt-get install -y postgresql)", ErrToolMissing)
	}
	// Newest major version last; compare numerically ("9" < "15").
	sort.Slice(matches, func(i, j int) bool {
		return majorOf(matches[i]) < majorOf(matches[j])
	})
	return filepath.Dir(matches[len(matches)-1]), nil
}

func majorOf(path string) int {
	var n int
	fmt.Sscanf(filepath.Base(filepath.Dir(filepath.Dir(path))), "%d", &n)
	return n
}
