package boltstore

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/latchbroker/latch/broker"
)

const chainLen = 20

// chainFile writes a closed database holding chainLen audit events, one
// minute apart, and returns its path.
func chainFile(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "latch.db")
	s := openAt(t, path, Options{})
	for i := 0; i < chainLen; i++ {
		e := ev(broker.EventIssue, fmt.Sprintf("L%d", i+1))
		e.Time = t0.Add(time.Duration(i) * time.Minute)
		e.Details = map[string]string{"template_version": "sha256:abc"}
		apply(t, s, broker.Change{Events: []broker.Event{e}})
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// tamper edits a copy of path's audit bucket and meta with raw bbolt.
func tamper(t *testing.T, path string, fn func(audit, meta *bolt.Bucket) error) string {
	t.Helper()
	cp := copyFile(t, path)
	db, err := bolt.Open(cp, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error { return fn(tx.Bucket(bktAudit), tx.Bucket(bktMeta)) }); err != nil {
		t.Fatal(err)
	}
	return cp
}

func getEvent(t *testing.T, audit *bolt.Bucket, seq uint64) broker.Event {
	t.Helper()
	var e broker.Event
	if err := json.Unmarshal(audit.Get(seqKey(seq)), &e); err != nil {
		t.Fatal(err)
	}
	return e
}

func putEvent(t *testing.T, audit *bolt.Bucket, key uint64, e broker.Event) error {
	t.Helper()
	b, _ := json.Marshal(e)
	return audit.Put(seqKey(key), b)
}

func TestVerifyAudit_Clean(t *testing.T) {
	path := chainFile(t)
	var calls [][2]uint64
	res, err := VerifyAudit(path, func(done, total uint64) { calls = append(calls, [2]uint64{done, total}) })
	if err != nil {
		t.Fatal(err)
	}
	if !res.OK() || res.Verified != chainLen || res.HeadSeq != chainLen || res.LastHash != res.HeadHash || res.LastHash == "" {
		t.Errorf("VerifyAudit = %+v", res)
	}
	if len(calls) == 0 || calls[len(calls)-1] != [2]uint64{chainLen, chainLen} {
		t.Errorf("progress calls = %v, want a last call (%d, %d)", calls, chainLen, chainLen)
	}

	// An empty log verifies too.
	empty := filepath.Join(t.TempDir(), "empty.db")
	openAt(t, empty, Options{}).Close()
	if res, err := VerifyAudit(empty, nil); err != nil || !res.OK() || res.Verified != 0 {
		t.Errorf("VerifyAudit(empty) = %+v, %v", res, err)
	}
}

// TestVerifyAudit_Tampered tampers with copies of one chain in each way an
// attacker with the file could, and checks that verify names the record.
func TestVerifyAudit_Tampered(t *testing.T) {
	path := chainFile(t)
	clean, err := VerifyAudit(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		tamper   func(t *testing.T, audit, meta *bolt.Bucket) error
		firstBad uint64
		want     string
	}{
		{"Edit", func(t *testing.T, audit, _ *bolt.Bucket) error {
			e := getEvent(t, audit, 7)
			e.Actor = "spiffe://example.org/agent/innocent"
			return putEvent(t, audit, 7, e)
		}, 7, "record 7: hash does not match its content (the record was edited)"},
		{"EditAndRehash", func(t *testing.T, audit, _ *bolt.Bucket) error {
			e := getEvent(t, audit, 7)
			e.Outcome = "denied"
			e.Hash = e.ComputeHash()
			return putEvent(t, audit, 7, e)
		}, 8, "record 8: previous hash does not match record 7"},
		{"EditRawBytes", func(t *testing.T, audit, _ *bolt.Bucket) error {
			v := bytes.Clone(audit.Get(seqKey(7)))
			return audit.Put(seqKey(7), v[:len(v)/2])
		}, 7, "record 7 cannot be decoded"},
		{"Delete", func(t *testing.T, audit, _ *bolt.Bucket) error {
			return audit.Delete(seqKey(7))
		}, 7, "record 7 is missing (deleted): the next stored record is 8"},
		{"DeleteFirst", func(t *testing.T, audit, _ *bolt.Bucket) error {
			return audit.Delete(seqKey(1))
		}, 1, "record 1 is missing"},
		{"DeleteAndRenumber", func(t *testing.T, audit, _ *bolt.Bucket) error {
			// Shift 8… down over the deleted 7, keys only.
			for q := uint64(7); q < chainLen; q++ {
				if err := audit.Put(seqKey(q), bytes.Clone(audit.Get(seqKey(q+1)))); err != nil {
					return err
				}
			}
			return audit.Delete(seqKey(chainLen))
		}, 7, "record 7 holds the content of record 8"},
		{"Swap", func(t *testing.T, audit, _ *bolt.Bucket) error {
			a, b := bytes.Clone(audit.Get(seqKey(5))), bytes.Clone(audit.Get(seqKey(9)))
			audit.Put(seqKey(5), b)
			return audit.Put(seqKey(9), a)
		}, 5, "record 5 holds the content of record 9 (records were reordered"},
		{"SwapAndRenumber", func(t *testing.T, audit, _ *bolt.Bucket) error {
			a, b := getEvent(t, audit, 5), getEvent(t, audit, 6)
			a.Seq, b.Seq = 6, 5
			putEvent(t, audit, 5, b)
			return putEvent(t, audit, 6, a)
		}, 5, "record 5:"},
		{"TruncateTail", func(t *testing.T, audit, _ *bolt.Bucket) error {
			for q := uint64(16); q <= chainLen; q++ {
				if err := audit.Delete(seqKey(q)); err != nil {
					return err
				}
			}
			return nil
		}, 16, "records 16 to 20 are missing: the log ends at record 15 but latch wrote up to 20 (the tail was truncated)"},
		{"RewriteLast", func(t *testing.T, audit, _ *bolt.Bucket) error {
			e := getEvent(t, audit, chainLen)
			e.Type = broker.EventDeny
			e.Hash = e.ComputeHash()
			return putEvent(t, audit, chainLen, e)
		}, chainLen, "record 20 does not match the audit head's hash (the last record was rewritten)"},
		{"Append", func(t *testing.T, audit, _ *bolt.Bucket) error {
			prev := getEvent(t, audit, chainLen)
			e := ev(broker.EventIssue, "forged")
			e.Chain(&prev)
			return putEvent(t, audit, chainLen+1, e)
		}, chainLen + 1, "record 21 is past the audit head 20"},
		{"DeleteHead", func(t *testing.T, _, meta *bolt.Bucket) error {
			return meta.Delete(keyAuditHead)
		}, 1, "the audit head is missing"},
		{"ForeignKey", func(t *testing.T, audit, _ *bolt.Bucket) error {
			return audit.Put([]byte{0, 0, 0, 0, 0, 0, 0, 3, 'x'}, []byte("{}"))
		}, 4, "record 4: key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cp := tamper(t, path, func(audit, meta *bolt.Bucket) error { return tt.tamper(t, audit, meta) })
			res, err := VerifyAudit(cp, nil)
			if !errors.Is(err, ErrAuditBroken) {
				t.Fatalf("VerifyAudit: err = %v, want ErrAuditBroken", err)
			}
			if res.OK() || res.FirstBad != tt.firstBad {
				t.Errorf("FirstBad = %d, want %d (%+v)", res.FirstBad, tt.firstBad, res)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(res.Problem, tt.want) {
				t.Errorf("error %q does not say %q", err, tt.want)
			}
			if res.Verified != min(tt.firstBad-1, chainLen) && tt.name != "DeleteHead" && tt.name != "RewriteLast" && tt.name != "Append" {
				t.Errorf("Verified = %d, want %d", res.Verified, tt.firstBad-1)
			}
		})
	}

	// Truncating the tail and moving the head back with it cannot be seen
	// inside the file; the last hash kept elsewhere shows it.
	cp := tamper(t, path, func(audit, meta *bolt.Bucket) error {
		var e broker.Event
		json.Unmarshal(audit.Get(seqKey(15)), &e)
		for q := uint64(16); q <= chainLen; q++ {
			audit.Delete(seqKey(q))
		}
		return putHead(meta, auditHead{seq: 15, hash: e.Hash})
	})
	res, err := VerifyAudit(cp, nil)
	if err != nil || res.LastHash == clean.LastHash {
		t.Errorf("consistent truncation: %+v, %v; the last hash must differ from the clean %s", res, err, clean.LastHash)
	}
}

// TestVerifyAudit_Garbage stores values that are not events at all: verify
// names the record and does not panic.
func TestVerifyAudit_Garbage(t *testing.T) {
	path := chainFile(t)
	for _, v := range [][]byte{nil, []byte("null"), []byte(`{"seq":"x"}`), []byte(`[1,2]`), {0xff, 0xfe}, []byte(`{"seq":3,"time":"yesterday"}`)} {
		cp := tamper(t, path, func(audit, _ *bolt.Bucket) error { return audit.Put(seqKey(3), v) })
		res, err := VerifyAudit(cp, nil)
		if !errors.Is(err, ErrAuditBroken) || res.FirstBad != 3 {
			t.Errorf("value %q: %+v, %v; want record 3 named", v, res, err)
		}
	}
	// The audit bucket itself deleted.
	cp := copyFile(t, path)
	db, err := bolt.Open(cp, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket(bktAudit) })
	db.Close()
	if _, err := VerifyAudit(cp, nil); !errors.Is(err, ErrCorrupt) {
		t.Errorf("no audit bucket: err = %v, want ErrCorrupt", err)
	}
	if _, err := Open(cp, Options{ReadOnly: true}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("read-only Open without the audit bucket: err = %v, want ErrCorrupt", err)
	}

	// A corrupt head.
	cp = tamper(t, path, func(_, meta *bolt.Bucket) error { return meta.Put(keyAuditHead, []byte{1}) })
	if _, err := VerifyAudit(cp, nil); !errors.Is(err, ErrCorrupt) {
		t.Errorf("short head: err = %v, want ErrCorrupt", err)
	}
}

func TestExportAudit(t *testing.T) {
	path := chainFile(t)
	export := func(since time.Time) []broker.Event {
		t.Helper()
		var buf bytes.Buffer
		if err := ExportAudit(path, since, &buf); err != nil {
			t.Fatal(err)
		}
		var out []broker.Event
		sc := bufio.NewScanner(&buf)
		for sc.Scan() {
			var e broker.Event
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				t.Fatalf("line %q: %v", sc.Text(), err)
			}
			out = append(out, e)
		}
		return out
	}
	all := export(time.Time{})
	if len(all) != chainLen {
		t.Fatalf("exported %d events, want %d", len(all), chainLen)
	}
	var v broker.ChainVerifier
	for _, e := range all {
		if err := v.Next(e); err != nil {
			t.Errorf("exported chain: %v", err)
		}
	}
	recent := export(t0.Add(15 * time.Minute))
	if len(recent) != 5 || recent[0].Seq != 16 {
		t.Errorf("export since +15m: %d events from %d, want 5 from 16", len(recent), recent[0].Seq)
	}
	// A damaged record stops the export with its number.
	cp := tamper(t, path, func(audit, _ *bolt.Bucket) error { return audit.Put(seqKey(4), []byte("{")) })
	if err := ExportAudit(cp, time.Time{}, &bytes.Buffer{}); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "record 4") {
		t.Errorf("export of a damaged log: err = %v", err)
	}
}
