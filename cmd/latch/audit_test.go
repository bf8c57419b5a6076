package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
	bolt "go.etcd.io/bbolt"

	"github.com/latchbroker/latch/broker"
	"github.com/latchbroker/latch/broker/boltstore"
)

// writeAuditDB creates a database with n audit events and returns its path.
func writeAuditDB(t *testing.T, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "latch.db")
	st, err := boltstore.Open(path, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		ev := broker.Event{Type: broker.EventIssue, Actor: "spiffe://example.org/agent/a", Lease: strings.Repeat("L", i+1)}
		if _, err := st.Apply(context.Background(), broker.Change{Events: []broker.Event{ev}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// runExit runs latch with both outputs in one string and returns the exit
// status that cli.Exit would have ended the process with.
func runExit(t *testing.T, args ...string) (string, int) {
	t.Helper()
	var out bytes.Buffer
	code := 0
	old := cli.OsExiter
	cli.OsExiter = func(c int) { code = c }
	defer func() { cli.OsExiter = old }()
	app := newApp()
	app.Writer, app.ErrWriter = &out, &out
	if err := app.Run(append([]string{"latch"}, args...)); err != nil && code == 0 {
		code = exitCode(err)
		out.WriteString(err.Error())
	}
	return out.String(), code
}

func TestAuditVerify(t *testing.T) {
	path := writeAuditDB(t, 5)
	out, code := runExit(t, "audit", "verify", "--db", path)
	if code != 0 || !strings.Contains(out, "ok: 5 records") {
		t.Fatalf("clean chain: exit %d, output %q", code, out)
	}

	// Delete record 3 of the audit bucket behind latch's back.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		c := tx.Bucket([]byte("audit")).Cursor()
		k, _ := c.First()
		k, _ = c.Next()
		k, _ = c.Next()
		return tx.Bucket([]byte("audit")).Delete(k)
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	out, code = runExit(t, "audit", "verify", "--db", path)
	if code != 1 || !strings.Contains(out, "FAILED") || !strings.Contains(out, "record 3") {
		t.Fatalf("chain with a deleted record: exit %d, output %q; want exit 1 naming record 3", code, out)
	}
}

func TestAuditExport(t *testing.T) {
	path := writeAuditDB(t, 3)
	out, code := runExit(t, "audit", "export", "--db", path)
	if code != 0 || strings.Count(out, "\n") != 3 || !strings.Contains(out, `"type":"issue"`) {
		t.Fatalf("export: exit %d, output %q; want 3 JSON lines", code, out)
	}
}
