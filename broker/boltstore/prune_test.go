package boltstore

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/latchbroker/latch/broker"
)

// TestVerifyAudit_Expectation: a checkpoint kept outside the file catches
// what the file alone cannot — the tail cut with its head moved back — and
// a rewritten record, and names the missing range.
func TestVerifyAudit_Expectation(t *testing.T) {
	path := chainFile(t)
	clean, err := VerifyAudit(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	cp := Expectation{Seq: chainLen, Hash: clean.LastHash, Source: "the checkpoint of noon"}
	if res, err := VerifyAudit(path, nil, cp); err != nil || len(res.Checked) != 1 {
		t.Fatalf("clean log against its checkpoint: %+v, %v", res, err)
	}
	cut := tamper(t, path, func(audit, meta *bolt.Bucket) error {
		e := getEvent(t, audit, 15)
		for q := uint64(16); q <= chainLen; q++ {
			audit.Delete(seqKey(q))
		}
		return putHead(meta, auditHead{seq: 15, hash: e.Hash})
	})
	res, err := VerifyAudit(cut, nil, cp)
	if !errors.Is(err, ErrAuditBroken) || res.FirstBad != 16 || !strings.Contains(res.Problem, "records 16 to 20 are missing: the checkpoint of noon") {
		t.Fatalf("cut tail against the checkpoint: %+v, %v", res, err)
	}
	wrong := Expectation{Seq: 7, Hash: strings.Repeat("0", 64), Source: "a forged checkpoint"}
	if res, err := VerifyAudit(path, nil, wrong); !errors.Is(err, ErrAuditBroken) || res.FirstBad != 7 {
		t.Fatalf("a checkpoint that disagrees: %+v, %v", res, err)
	}
}

// TestPruneAudit: export, prune, and what is left verifies, anchored to
// the last pruned record; a checkpoint of the pruned part still checks
// against the anchor; a broken chain is never pruned.
func TestPruneAudit(t *testing.T) {
	path := copyFile(t, chainFile(t))
	clean, _ := VerifyAudit(path, nil)
	var export bytes.Buffer
	if err := ExportAudit(path, time.Time{}, &export); err != nil {
		t.Fatal(err)
	}
	var rec12 broker.Event
	readOnly(path, func(tx *bolt.Tx) error { rec12 = getEvent(t, tx.Bucket(bktAudit), 12); return nil })

	if err := PruneAudit(path, 12); err != nil {
		t.Fatal(err)
	}
	res, err := VerifyAudit(path, nil, Expectation{Seq: 12, Hash: rec12.Hash, Source: "a checkpoint"}, Expectation{Seq: chainLen, Hash: clean.LastHash, Source: "the last checkpoint"})
	if err != nil || res.PrunedThrough != 12 || res.Verified != chainLen-12 || len(res.Checked) != 2 {
		t.Fatalf("after prune: %+v, %v", res, err)
	}
	if err := PruneAudit(path, 12); err != nil {
		t.Fatalf("pruning again: %v", err)
	}
	if err := PruneAudit(path, chainLen+1); err == nil {
		t.Fatal("pruned past the end of the log")
	}
	// The first record left, deleted: the gap after the anchor is seen.
	gap := tamper(t, path, func(audit, _ *bolt.Bucket) error { return audit.Delete(seqKey(13)) })
	if res, err := VerifyAudit(gap, nil); !errors.Is(err, ErrAuditBroken) || res.FirstBad != 13 {
		t.Fatalf("record 13 deleted after the prune: %+v, %v", res, err)
	}
	if err := PruneAudit(gap, 15); !errors.Is(err, ErrAuditBroken) {
		t.Fatalf("pruning a broken chain: %v, want it refused", err)
	}
	// The export verifies, whole or from where the store now starts.
	if res, err := VerifyExport(bytes.NewReader(export.Bytes()), Expectation{Seq: chainLen, Hash: clean.LastHash, Source: "the last checkpoint"}); err != nil || res.Verified != chainLen {
		t.Fatalf("the export: %+v, %v", res, err)
	}
	lines := bytes.SplitAfter(export.Bytes(), []byte("\n"))
	if res, err := VerifyExport(bytes.NewReader(bytes.Join(lines[12:], nil))); err != nil || res.PrunedThrough != 12 {
		t.Fatalf("a segment of the export: %+v, %v", res, err)
	}
	// An export with a record dropped, or cut short of a checkpoint, fails.
	if _, err := VerifyExport(bytes.NewReader(append(bytes.Join(lines[:5], nil), bytes.Join(lines[6:], nil)...))); !errors.Is(err, ErrAuditBroken) {
		t.Fatalf("an export missing record 6: %v", err)
	}
	if res, err := VerifyExport(bytes.NewReader(bytes.Join(lines[:15], nil)), Expectation{Seq: chainLen, Hash: clean.LastHash, Source: "the last checkpoint"}); !errors.Is(err, ErrAuditBroken) || res.FirstBad != 16 {
		t.Fatalf("an export cut short of the checkpoint: %+v, %v", res, err)
	}
}
