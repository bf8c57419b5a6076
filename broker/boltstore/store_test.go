package boltstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/latchbroker/latch/broker"
)

func TestOpen_InitialisesEmptyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "latch.db")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s := openAt(t, path, Options{})
	err := s.db.View(func(tx *bolt.Tx) error {
		for _, name := range allBuckets {
			if tx.Bucket(name) == nil {
				t.Errorf("bucket %s missing", name)
			}
		}
		if v := getSchema(tx.Bucket(bktMeta)); v != 2 {
			t.Errorf("schema = %d, want 2", v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode = %v, %v; want 0600", fi.Mode(), err)
	}
}

func TestOpen_SecondOpenerFailsFast(t *testing.T) {
	path := filepath.Join(t.TempDir(), "latch.db")
	openAt(t, path, Options{})

	start := time.Now()
	_, err := Open(path, Options{Timeout: 100 * time.Millisecond})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: err = %v, want ErrLocked", err)
	}
	if !strings.Contains(err.Error(), path) {
		t.Errorf("error %q does not name the file", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("second Open took %s", d)
	}
	// The audit tools open read-only and must say the same.
	if _, err := VerifyAudit(path, nil); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), path) {
		t.Errorf("VerifyAudit on a held file: err = %v, want ErrLocked naming it", err)
	}
}

func TestOpen_SchemaTooNew(t *testing.T) {
	path := filepath.Join(t.TempDir(), "latch.db")
	s := openAt(t, path, Options{})
	s.Close()
	setSchema(t, path, 7)

	_, err := Open(path, Options{})
	if !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("Open: err = %v, want ErrSchemaTooNew", err)
	}
	for _, want := range []string{path, "schema 7", "up to 2"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if _, err := Open(path, Options{ReadOnly: true}); !errors.Is(err, ErrSchemaTooNew) {
		t.Errorf("read-only Open: err = %v, want ErrSchemaTooNew", err)
	}
}

func setSchema(t *testing.T, path string, v uint64) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error { return putSchema(tx.Bucket(bktMeta), v) }); err != nil {
		t.Fatal(err)
	}
}

// TestOpen_Migrates runs the migration hook as a future schema would.
// It changes package variables, so it does not run in parallel.
func TestOpen_Migrates(t *testing.T) {
	path := filepath.Join(t.TempDir(), "latch.db")
	s := openAt(t, path, Options{})
	apply(t, s, broker.Change{Events: []broker.Event{ev(broker.EventConfigLoad, "")}})
	s.Close()

	oldVersion := schemaVersion
	schemaVersion = oldVersion + 1
	ran := 0
	migrations[oldVersion] = func(tx *bolt.Tx) error {
		ran++
		_, err := tx.CreateBucket([]byte("v2_only"))
		return err
	}
	t.Cleanup(func() { schemaVersion = oldVersion; delete(migrations, oldVersion) })

	// A read-only opener cannot migrate and says so.
	if _, err := Open(path, Options{ReadOnly: true}); err == nil || !strings.Contains(err.Error(), "migrat") {
		t.Errorf("read-only Open of an old schema: err = %v, want a migration message", err)
	}

	s = openAt(t, path, Options{})
	if ran != 1 {
		t.Fatalf("migration ran %d times, want 1", ran)
	}
	s.db.View(func(tx *bolt.Tx) error {
		if v := getSchema(tx.Bucket(bktMeta)); v != oldVersion+1 {
			t.Errorf("schema after migration = %d, want %d", v, oldVersion+1)
		}
		if tx.Bucket([]byte("v2_only")) == nil {
			t.Error("migration's bucket missing")
		}
		return nil
	})
	// The data written under schema 1 is still there.
	if last, err := s.LastEvent(context.Background()); err != nil || last == nil || last.Seq != 1 {
		t.Errorf("LastEvent after migration = %v, %v", last, err)
	}
	s.Close()

	// A failing migration leaves the file as it was.
	schemaVersion = oldVersion + 2
	migrations[oldVersion+1] = func(*bolt.Tx) error { return errors.New("boom") }
	t.Cleanup(func() { delete(migrations, oldVersion+1) })
	want := fmt.Sprintf("migrate schema %d to %d: boom", oldVersion+1, oldVersion+2)
	if _, err := Open(path, Options{}); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("failing migration: err = %v", err)
	}
	schemaVersion = oldVersion + 1
	openAt(t, path, Options{}).Close()
}

func TestOpen_ForeignFiles(t *testing.T) {
	dir := t.TempDir()

	foreign := filepath.Join(dir, "foreign.db")
	db, err := bolt.Open(foreign, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("theirs")); return err })
	db.Close()
	if _, err := Open(foreign, Options{}); !errors.Is(err, ErrNotLatch) {
		t.Errorf("Open(bbolt file of someone else): err = %v, want ErrNotLatch", err)
	}

	junk := filepath.Join(dir, "junk.db")
	os.WriteFile(junk, bytes.Repeat([]byte("not a database "), 4096), 0o600)
	if _, err := Open(junk, Options{}); err == nil || !strings.Contains(err.Error(), junk) {
		t.Errorf("Open(junk): err = %v, want an error naming the file", err)
	}
	if _, err := VerifyAudit(junk, nil); err == nil {
		t.Error("VerifyAudit(junk) succeeded")
	}

	missing := filepath.Join(dir, "missing.db")
	if _, err := Open(missing, Options{ReadOnly: true}); err == nil {
		t.Error("read-only Open of a missing file succeeded")
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Error("read-only Open created the file")
	}
}

func TestStore_ReadOnly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "latch.db")
	s := openAt(t, path, Options{})
	apply(t, s, broker.Change{PutLeases: []*broker.Lease{lease("L1", "a", "t", broker.StateActive, t0.Add(time.Hour))}})
	s.Close()

	ro := openAt(t, path, Options{ReadOnly: true})
	if _, err := ro.Lease(context.Background(), "L1"); err != nil {
		t.Errorf("read-only Lease: %v", err)
	}
	_, err := ro.Apply(context.Background(), broker.Change{Events: []broker.Event{ev(broker.EventFreeze, "")}})
	if !errors.Is(err, broker.ErrStoreUnavailable) {
		t.Errorf("read-only Apply: err = %v, want ErrStoreUnavailable", err)
	}
}

// TestApply_DiskFull fills the file up to a size cap, as a full disk would,
// and checks that the failing change leaves nothing and the chain stays
// whole.
func TestApply_DiskFull(t *testing.T) {
	path := filepath.Join(t.TempDir(), "latch.db")
	s := openAt(t, path, Options{maxSize: 1 << 20})
	ctx := context.Background()
	g := newIDs()
	big := strings.Repeat("x", 2000)
	var failed *broker.Lease
	var err error
	for i := 0; i < 10000 && err == nil; i++ {
		l := lease(g.Next(), "a", "t", broker.StateActive, t0.Add(time.Hour))
		l.Reason = big
		failed = l
		e := ev(broker.EventIssue, l.ID)
		_, err = s.Apply(ctx, broker.Change{PutLeases: []*broker.Lease{l}, Events: []broker.Event{e}})
	}
	if !errors.Is(err, broker.ErrStoreUnavailable) {
		t.Fatalf("Apply on a full file: err = %v, want ErrStoreUnavailable", err)
	}
	if _, err := s.Lease(ctx, failed.ID); !errors.Is(err, broker.ErrLeaseNotFound) {
		t.Errorf("lease of the failed change: err = %v, want ErrLeaseNotFound", err)
	}
	last, err := s.LastEvent(ctx)
	if err != nil || last == nil || last.Lease == failed.ID {
		t.Errorf("LastEvent = %+v, %v: the failed change's event must not be there", last, err)
	}
	s.Close()
	if res, err := VerifyAudit(path, nil); err != nil || res.Verified != last.Seq {
		t.Errorf("VerifyAudit after a full disk = %+v, %v; want %d verified", res, err, last.Seq)
	}
}

func TestBackup(t *testing.T) {
	s := openTest(t, Options{})
	for i := 0; i < 5; i++ {
		apply(t, s, broker.Change{Events: []broker.Event{ev(broker.EventConfigLoad, "")}})
	}
	var buf bytes.Buffer
	if _, err := s.Backup(context.Background(), &buf); err != nil {
		t.Fatal(err)
	}
	cp := filepath.Join(t.TempDir(), "backup.db")
	os.WriteFile(cp, buf.Bytes(), 0o400)
	// The server keeps the original; the copy verifies.
	res, err := VerifyAudit(cp, nil)
	if err != nil || res.Verified != 5 || !res.OK() {
		t.Errorf("VerifyAudit(backup) = %+v, %v", res, err)
	}
}
