package boltstore

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
)

// goodEvent is record 1 of the chain the fuzzed record follows.
func goodEvent() broker.Event {
	e := broker.Event{Type: broker.EventIssue, Time: t0, Actor: "spiffe://example.org/agent/a", Lease: "L1"}
	e.Chain(nil)
	return e
}

// FuzzDecodeEvent feeds an arbitrary stored record (key and value) to the
// decoder and to the audit checker, after one good record, as VerifyAudit
// does with a file that may have been tampered with. It must never panic,
// and whatever decodes must re-encode to the same hash.
func FuzzDecodeEvent(f *testing.F) {
	first := goodEvent()
	second := broker.Event{Type: broker.EventRevoke, Time: t0.Add(time.Second), Reasons: []string{"leak"}, Details: map[string]string{"k": "v"}}
	second.Chain(&first)
	v2, _ := json.Marshal(second)
	f.Add(seqKey(2), v2)
	f.Add(seqKey(2), []byte(`{"seq":2,"time":"0000-01-01T00:00:00+01:00","type":"issue"}`))
	f.Add(seqKey(2), []byte(`{"seq":2,"time":"9999-12-31T23:59:59-01:00","type":"issue"}`))
	f.Add(seqKey(3), v2)
	f.Add([]byte("short"), []byte("{}"))
	f.Add(seqKey(2), []byte("null"))

	firstKey := seqKey(1)
	firstVal, _ := json.Marshal(first)
	f.Fuzz(func(t *testing.T, k, v []byte) {
		seq, e, err := decodeEvent(k, v)
		if err == nil && seq == e.Seq && hashable(e) {
			// Decoding is a function of the bytes: a re-encoded record
			// hashes the same, so an export verifies like the file.
			b, err := json.Marshal(e)
			if err != nil {
				t.Fatalf("re-encode %+v: %v", e, err)
			}
			_, e2, err := decodeEvent(k, b)
			if err != nil {
				t.Fatalf("decode re-encoded %q: %v", b, err)
			}
			if e.ComputeHash() != e2.ComputeHash() {
				t.Fatalf("hash changed across a round trip: %q → %q", v, b)
			}
		}

		var ch auditChecker
		if !ch.record(firstKey, firstVal) {
			t.Fatalf("good record 1 refused: %s", ch.problem)
		}
		ok := ch.record(k, v)
		ch.end(auditHead{seq: 2, hash: second.Hash})
		if ok && ch.problem == "" && e.Hash != second.Hash {
			t.Fatalf("a record other than the real record 2 verified: %q", v)
		}
		if !ok && (ch.bad == 0 || ch.problem == "") {
			t.Fatalf("refused without naming the record: %+v", ch)
		}
	})
}

// FuzzDecodeLease feeds arbitrary bytes to the lease decoders used by the
// reads and by Apply's index maintenance; a decoded lease goes back through
// Apply's validation and encoding. None of it may panic.
func FuzzDecodeLease(f *testing.F) {
	l := lease("01J0000000000000000000000A", "spiffe://example.org/agent/a", "report", broker.StateActive, t0.Add(time.Hour))
	b, _ := json.Marshal(l)
	f.Add(b)
	f.Add([]byte(`{"id":"x","state":"active","expires_at":"0000-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"agent":"a\u0000b"}`))
	f.Add([]byte(`[]`))

	s := &Store{now: func() time.Time { return t0 }}
	f.Fuzz(func(t *testing.T, v []byte) {
		var ix leaseIndex
		_ = json.Unmarshal(v, &ix)
		l, err := decode[broker.Lease]("fuzz", v)
		if err != nil {
			return
		}
		w, err := s.prepare(broker.Change{PutLeases: []*broker.Lease{l}})
		if err != nil {
			return
		}
		if _, err := decode[broker.Lease]("fuzz", w.leases[0].val); err != nil {
			t.Fatalf("a lease Apply encoded does not decode: %v", err)
		}
	})
}

// FuzzVerifyExport: any bytes as an export never panic, and whatever
// verifies is a chain: consecutive records, each linked to the last.
func FuzzVerifyExport(f *testing.F) {
	var buf bytes.Buffer
	path := chainFile(f)
	if err := ExportAudit(path, time.Time{}, &buf); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Add([]byte("{}\n"))
	f.Add([]byte(`{"seq":2,"prev_hash":"x"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		res, err := VerifyExport(bytes.NewReader(data))
		if err == nil && res.Verified > 0 && res.LastHash == "" {
			t.Fatalf("verified %d records without a last hash", res.Verified)
		}
	})
}
