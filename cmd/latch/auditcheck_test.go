package main

import (
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	bolt "go.etcd.io/bbolt"

	"github.com/latchbroker/latch/attest/attesttest"
	"github.com/latchbroker/latch/broker/boltstore"
	"github.com/latchbroker/latch/broker/checkpoint"
)

// TestAuditVerify_Checkpoint: the tail cut with the head moved back passes
// a verify of the file alone, and fails against a checkpoint kept
// elsewhere, naming the missing records; a forged checkpoint is refused.
func TestAuditVerify_Checkpoint(t *testing.T) {
	dir := t.TempDir()
	path := writeAuditDB(t, 8)
	res, err := boltstore.VerifyAudit(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("example.org")
	ca := attesttest.New(t, td)
	signed, err := checkpoint.Sign(checkpoint.Checkpoint{Seq: 8, Hash: res.LastHash, Time: time.Now()}, ca.X509SVID(spiffeid.RequireFromPath(td, "/latch")))
	if err != nil {
		t.Fatal(err)
	}
	cpFile, bundle := filepath.Join(dir, "checkpoints"), filepath.Join(dir, "bundle.pem")
	write(t, cpFile, signed+"\n")
	write(t, bundle, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Root().Raw})))

	if out, code := runExit(t, "audit", "verify", "--db", path, "--checkpoint", cpFile, "--bundle", bundle); code != 0 || !strings.Contains(out, "record 8 agrees with the checkpoint spiffe://example.org/latch") {
		t.Fatalf("clean chain against its checkpoint: exit %d, %q", code, out)
	}
	cutTail(t, path, 5)
	if out, code := runExit(t, "audit", "verify", "--db", path); code != 0 {
		t.Fatalf("the cut file alone should verify (that is the point of checkpoints): exit %d, %q", code, out)
	}
	out, code := runExit(t, "audit", "verify", "--db", path, "--checkpoint", cpFile, "--bundle", bundle)
	if code != 1 || !strings.Contains(out, "records 6 to 8 are missing") {
		t.Fatalf("cut tail against the checkpoint: exit %d, %q; want records 6 to 8 named", code, out)
	}
	out, code = runExit(t, "audit", "verify", "--db", path, "--expect", fmt.Sprintf("8:%s", res.LastHash))
	if code != 1 || !strings.Contains(out, "records 6 to 8 are missing") {
		t.Fatalf("cut tail against --expect: exit %d, %q", code, out)
	}
	// A checkpoint signed by another CA is not trusted.
	forged, _ := checkpoint.Sign(checkpoint.Checkpoint{Seq: 3, Hash: res.LastHash, Time: time.Now()}, attesttest.New(t, td).X509SVID(spiffeid.RequireFromPath(td, "/latch")))
	write(t, cpFile, forged+"\n")
	if out, code := runExit(t, "audit", "verify", "--db", path, "--checkpoint", cpFile, "--bundle", bundle); code == 0 || !strings.Contains(out, "checkpoints:1") {
		t.Fatalf("forged checkpoint: exit %d, %q; want it refused, naming its line", code, out)
	}
}

// TestAuditPrune: export, prune, and both the pruned store and the
// export verify; prune refuses an export that lacks the records.
func TestAuditPrune(t *testing.T) {
	dir := t.TempDir()
	path := writeAuditDB(t, 10)
	out, code := runExit(t, "audit", "export", "--db", path)
	if code != 0 {
		t.Fatalf("export: %d %q", code, out)
	}
	full, partial := filepath.Join(dir, "full.jsonl"), filepath.Join(dir, "partial.jsonl")
	write(t, full, out)
	write(t, partial, strings.Join(strings.SplitAfter(out, "\n")[:4], ""))
	if out, code := runExit(t, "audit", "prune", "--db", path, "--through", "6", "--export", partial); code == 0 || !strings.Contains(out, "does not hold record 6") {
		t.Fatalf("prune past what the export holds: exit %d, %q", code, out)
	}
	if out, code := runExit(t, "audit", "prune", "--db", path, "--through", "6", "--export", full); code != 0 || !strings.Contains(out, "pruned records 1 to 6") {
		t.Fatalf("prune: exit %d, %q", code, out)
	}
	if out, code := runExit(t, "audit", "verify", "--db", path); code != 0 || !strings.Contains(out, "ok: 4 records (from record 7") {
		t.Fatalf("verify after prune: exit %d, %q", code, out)
	}
	if out, code := runExit(t, "audit", "verify", "--export", full); code != 0 || !strings.Contains(out, "ok: 10 records") {
		t.Fatalf("verify the export: exit %d, %q", code, out)
	}
}

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

// cutTail deletes the records after keep and moves the head back to
// record keep, as someone with the file could.
func cutTail(t *testing.T, path string, keep uint64) {
	t.Helper()
	var last string
	out, _ := runExit(t, "audit", "export", "--db", path)
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, fmt.Sprintf(`"seq":%d,`, keep)) {
			_, rest, _ := strings.Cut(line, `"hash":"`)
			last, _, _ = strings.Cut(rest, `"`)
		}
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		a := tx.Bucket([]byte("audit"))
		c := a.Cursor()
		for k, _ := c.Seek(seqKey(keep + 1)); k != nil; k, _ = c.Next() {
			if err := c.Delete(); err != nil {
				return err
			}
		}
		return tx.Bucket([]byte("meta")).Put([]byte("audit_head"), append(seqKey(keep), last...))
	})
	if err != nil {
		t.Fatal(err)
	}
}

func seqKey(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }
