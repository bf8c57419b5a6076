package stack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// Components selects what Start runs.
type Components uint8

const (
	WithVault Components = 1 << iota
	WithSPIRE
	WithPostgres
	// WithPersistentVault runs Vault as a regular server on file storage
	// instead of the in-memory dev server, so that Vault.Stop and
	// Vault.Start can take it down and bring it back with its state. It
	// implies WithVault.
	WithPersistentVault
	// WithEtcd runs a cluster of EtcdMembers etcd servers. All leaves it
	// out: only the packages that test the etcd store ask for it.
	WithEtcd

	All = WithVault | WithSPIRE | WithPostgres
)

// Stack is a running set of components. Fields of components not started
// are nil.
type Stack struct {
	Dir      string // temporary directory holding data and logs
	Vault    *Vault
	SPIRE    *SPIRE
	Postgres *Postgres
	Etcd     *Etcd
}

// Start starts the selected components in a new temporary directory. On
// error everything already started is stopped again.
func Start(ctx context.Context, which Components) (*Stack, error) {
	// Short paths: unix socket paths are limited to 107 bytes.
	dir, err := os.MkdirTemp("", "latch-stack-")
	if err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	s := &Stack{Dir: dir}
	persistent := which&WithPersistentVault != 0
	if persistent {
		which |= WithVault
	}
	type starter struct {
		want  Components
		start func() error
	}
	steps := []starter{
		{WithPostgres, func() (err error) { s.Postgres, err = startPostgres(ctx, mkdir(dir, "postgres")); return }},
		{WithVault, func() (err error) { s.Vault, err = startVault(ctx, mkdir(dir, "vault"), persistent); return }},
		{WithSPIRE, func() (err error) { s.SPIRE, err = startSPIRE(ctx, mkdir(dir, "spire")); return }},
		{WithEtcd, func() (err error) { s.Etcd, err = startEtcd(ctx, mkdir(dir, "etcd")); return }},
	}
	for _, st := range steps {
		if which&st.want == 0 {
			continue
		}
		if err := st.start(); err != nil {
			logs := s.logsError()
			s.Close()
			return nil, errors.Join(err, logs)
		}
	}
	return s, nil
}

func mkdir(parent, name string) string {
	d := filepath.Join(parent, name)
	_ = os.Mkdir(d, 0o700)
	return d
}

// Close stops every component in reverse order of start and keeps the
// directory (and its logs) only when LATCH_KEEP_STACK is set.
func (s *Stack) Close() {
	if s.Etcd != nil {
		s.Etcd.stop()
	}
	if s.SPIRE != nil {
		s.SPIRE.stop()
	}
	if s.Vault != nil {
		s.Vault.stop()
	}
	if s.Postgres != nil {
		s.Postgres.stop()
	}
	if os.Getenv("LATCH_KEEP_STACK") == "" {
		_ = os.RemoveAll(s.Dir)
	}
}

// DumpLogs writes every component's log to w.
func (s *Stack) DumpLogs(w io.Writer) { s.dumpLogs(w, 0) }

// dumpLogs writes the last max bytes (all when 0) of each log to w.
func (s *Stack) dumpLogs(w io.Writer, max int) {
	logs, _ := filepath.Glob(filepath.Join(s.Dir, "*", "*.log"))
	sort.Strings(logs)
	for _, l := range logs {
		b, err := os.ReadFile(l)
		if err != nil {
			continue
		}
		if max > 0 {
			b = []byte(tail(string(b), max))
		}
		fmt.Fprintf(w, "==== %s ====\n%s\n", l, b)
	}
}

func (s *Stack) logsError() error {
	var b strings.Builder
	s.dumpLogs(&b, 3000)
	if b.Len() == 0 {
		return nil
	}
	return errors.New(b.String())
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "...\n" + s[len(s)-n:]
}

// Main is the body of an integration package's TestMain: it starts the
// selected components, stores the stack in *out, runs the tests, prints the
// components' logs when a test failed, tears the stack down and returns the
// exit code. A missing tool fails the whole package with "run 'make tools'".
func Main(m *testing.M, which Components, out **Stack) int {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	s, err := Start(ctx, which)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: integration stack did not start: %v\n", err)
		return 1
	}
	*out = s
	code := m.Run()
	if code != 0 {
		s.DumpLogs(os.Stderr)
	}
	s.Close()
	return code
}
