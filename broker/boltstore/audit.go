package boltstore

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/latchbroker/latch/broker"
)

// eventPage is how many events Events reads per read transaction. fn runs
// between transactions: a slow consumer (a live stream to a browser) must
// not hold a read transaction open, because bbolt writers wait for readers
// before they can grow the file.
const eventPage = 256

// decodeEvent decodes one stored audit record: an 8-byte big-endian
// sequence key and the event's JSON. Anything else is an error, never a
// panic: VerifyAudit feeds it files that may have been tampered with.
func decodeEvent(k, v []byte) (uint64, broker.Event, error) {
	var e broker.Event
	if len(k) != 8 {
		return 0, e, fmt.Errorf("key %x is not an 8-byte sequence number", k)
	}
	seq := binary.BigEndian.Uint64(k)
	if err := json.Unmarshal(v, &e); err != nil {
		return seq, e, fmt.Errorf("record %d cannot be decoded: %v", seq, err)
	}
	return seq, e, nil
}

// Events calls fn for each audit event with Seq > after, in order, until
// fn returns false or an error, which Events returns.
func (s *Store) Events(ctx context.Context, after uint64, fn func(broker.Event) (bool, error)) error {
	page := make([]broker.Event, 0, eventPage)
	for after < math.MaxUint64 {
		page = page[:0]
		err := s.view(ctx, "read audit", func(tx *bolt.Tx) error {
			c := tx.Bucket(bktAudit).Cursor()
			for k, v := c.Seek(seqKey(after + 1)); k != nil && len(page) < eventPage; k, v = c.Next() {
				_, e, err := decodeEvent(k, v)
				if err != nil {
					return fmt.Errorf("%w: audit %v", ErrCorrupt, err)
				}
				page = append(page, e)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, e := range page {
			if more, err := fn(e); !more || err != nil {
				return err
			}
			after = e.Seq
		}
		if len(page) < eventPage {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return nil
}

// LastEvent returns the event at the audit head, nil when there is none.
func (s *Store) LastEvent(ctx context.Context) (*broker.Event, error) {
	var last *broker.Event
	err := s.view(ctx, "last audit event", func(tx *bolt.Tx) error {
		head, err := readHead(tx.Bucket(bktMeta))
		if err != nil || head.seq == 0 {
			return err
		}
		k := seqKey(head.seq)
		v := tx.Bucket(bktAudit).Get(k)
		if v == nil {
			return fmt.Errorf("%w: audit record %d, the head, is missing", ErrCorrupt, head.seq)
		}
		_, e, err := decodeEvent(k, v)
		if err != nil {
			return fmt.Errorf("%w: audit %v", ErrCorrupt, err)
		}
		last = &e
		return nil
	})
	return last, err
}

// VerifyResult is what VerifyAudit found.
type VerifyResult struct {
	// Verified is how many records, from record 1 on (or from the first
	// after the pruned ones), form a valid chain.
	Verified uint64
	// LastHash is the hash of the last verified record. Keeping it
	// outside the file (a ticket, a log server) lets a later verify tell
	// whether the log was rewritten from the start.
	LastHash string
	// HeadSeq and HeadHash are the audit head latch wrote with the last
	// event: where the log must end.
	HeadSeq  uint64
	HeadHash string
	// PrunedThrough is the last record pruned (PruneAudit): the chain is
	// verified from the record after it, linked to its hash. 0: none.
	PrunedThrough uint64
	// Checked are the expectations (checkpoints) the chain agreed with.
	Checked []Expectation
	// FirstBad is the sequence number of the first record that fails, 0
	// when the chain verifies; Problem says what is wrong with it.
	FirstBad uint64
	Problem  string
}

// OK reports whether the chain verified end to end.
func (r VerifyResult) OK() bool { return r.FirstBad == 0 && r.Problem == "" }

// progressEvery is how many records VerifyAudit checks between progress
// calls.
const progressEvery = 10000

// Expectation is what a checkpoint kept outside the database says of the
// chain: record Seq has hash Hash. Source names it in errors.
type Expectation struct {
	Seq    uint64
	Hash   string
	Source string
}

// VerifyAudit checks the audit chain of the database at path, opened
// read-only (a copy taken with Store.Backup, or a file no server holds):
// every record's sequence, link and hash with broker.ChainVerifier, from
// record 1 or from the anchor PruneAudit left, then the end of the log
// against the audit head, which catches a truncated tail or a rewritten
// last record, and against each expectation: a checkpoint kept outside the
// file catches a tail cut together with its head. It stops at the first
// failing record and returns an error wrapping ErrAuditBroken that names
// it (edited, deleted, reordered, truncated); other errors mean the file
// could not be read. progress, if not nil, is called every 10,000 records
// and at the end with the records checked and the records expected.
func VerifyAudit(path string, progress func(done, total uint64), expect ...Expectation) (res VerifyResult, err error) {
	err = readOnly(path, func(tx *bolt.Tx) error {
		meta, audit := tx.Bucket(bktMeta), tx.Bucket(bktAudit)
		head, err := readHead(meta)
		if err != nil {
			return err
		}
		pruned, err := readAnchor(meta, keyPruned)
		if err != nil {
			return err
		}
		res.HeadSeq, res.HeadHash, res.PrunedThrough = head.seq, head.hash, pruned.seq
		ch := auditChecker{expect: expect}
		if pruned.seq > 0 {
			ch.v.StartAfter(pruned.seq, pruned.hash)
			ch.meets(broker.Event{Seq: pruned.seq, Hash: pruned.hash}) // a checkpoint of the last pruned record
		}
		total := max(head.seq, lastKey(audit)) - pruned.seq
		c := audit.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if !ch.record(k, v) {
				break
			}
			if progress != nil && ch.v.Count()%progressEvery == 0 {
				progress(ch.v.Count(), total)
			}
		}
		ch.end(head)
		if progress != nil {
			progress(ch.v.Count(), total)
		}
		res.Verified, res.Checked = ch.v.Count(), ch.checked
		if last := ch.v.Last(); last != nil {
			res.LastHash = last.Hash
		}
		res.FirstBad, res.Problem = ch.bad, ch.problem
		return nil
	})
	if err != nil {
		return res, err
	}
	if !res.OK() {
		return res, fmt.Errorf("boltstore: verify audit in %s: %w: %s", path, ErrAuditBroken, res.Problem)
	}
	return res, nil
}

func lastKey(b *bolt.Bucket) uint64 {
	if k, _ := b.Cursor().Last(); len(k) == 8 {
		return binary.BigEndian.Uint64(k)
	}
	return 0
}

// auditChecker verifies stored audit records one at a time, in key order.
// It knows nothing of bbolt, so it can be fuzzed on raw bytes.
type auditChecker struct {
	v       broker.ChainVerifier
	expect  []Expectation
	checked []Expectation
	bad     uint64
	problem string
}

func (a *auditChecker) fail(seq uint64, format string, args ...any) bool {
	a.bad, a.problem = seq, fmt.Sprintf(format, args...)
	return false
}

// record checks the next stored record and reports whether the chain still
// holds.
func (a *auditChecker) record(k, v []byte) bool {
	want := a.v.NextSeq()
	seq, e, err := decodeEvent(k, v)
	switch {
	case len(k) != 8:
		return a.fail(want, "record %d: %v (a record was inserted)", want, err)
	case seq > want:
		return a.fail(want, "record %d is missing (deleted): the next stored record is %d", want, seq)
	case seq != want:
		return a.fail(want, "record %d: stored under sequence number %d (a record was inserted)", want, seq)
	case err != nil:
		return a.fail(seq, "%v (the record was edited)", err)
	case e.Seq != seq:
		return a.fail(seq, "record %d holds the content of record %d (records were reordered or edited)", seq, e.Seq)
	case !hashable(e):
		return a.fail(seq, "record %d: time %s cannot be encoded (the record was edited)", seq, e.Time)
	}
	if err := a.v.Next(e); err != nil {
		return a.fail(seq, "%v", err)
	}
	return a.meets(e)
}

// meets checks e against the expectations about its sequence number.
func (a *auditChecker) meets(e broker.Event) bool {
	for _, x := range a.expect {
		if x.Seq != e.Seq {
			continue
		}
		if x.Hash != e.Hash {
			return a.fail(e.Seq, "record %d does not match %s (the log was rewritten from record %d on, or before)", e.Seq, x.Source, e.Seq)
		}
		a.checked = append(a.checked, x)
	}
	return true
}

// end checks where the log stopped against the audit head and the
// expectations.
func (a *auditChecker) end(head auditHead) {
	if a.bad != 0 {
		return
	}
	last := a.v.Last()
	n := a.v.NextSeq() - 1 // the last record verified (or the prune anchor)
	switch {
	case head.seq == 0 && n > 0:
		a.fail(1, "the audit head is missing but the log holds %d records (the head was deleted)", n)
	case n < head.seq:
		a.fail(n+1, "records %d to %d are missing: the log ends at record %d but latch wrote up to %d (the tail was truncated)", n+1, head.seq, n, head.seq)
	case n > head.seq:
		a.fail(head.seq+1, "record %d is past the audit head %d: latch did not write it (records were appended)", head.seq+1, head.seq)
	case last != nil && last.Hash != head.hash:
		a.fail(n, "record %d does not match the audit head's hash (the last record was rewritten)", n)
	}
	if a.bad != 0 {
		return
	}
	for _, x := range a.expect {
		if x.Seq > n {
			a.fail(n+1, "records %d to %d are missing: %s saw the chain reach record %d, the log ends at %d (the tail was cut, head and all)", n+1, x.Seq, x.Source, x.Seq, n)
			return
		}
	}
}

// hashable reports whether e.ComputeHash can encode e: its time must have a
// four-digit year in UTC. A tampered record can hold "0000-01-01T00:00:00+01:00",
// which decodes fine and would make ComputeHash panic.
func hashable(e broker.Event) bool {
	y := e.Time.UTC().Year()
	return y >= 0 && y <= 9999
}

// ExportAudit writes the audit events of the database at path whose Time
// is not before since (every event when since is zero) to w as JSON lines,
// in sequence order. It opens the file read-only, like VerifyAudit, and
// does not verify the chain.
func ExportAudit(path string, since time.Time, w io.Writer) error {
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	err := readOnly(path, func(tx *bolt.Tx) error {
		// Event times follow sequence order only roughly (a request's time
		// is taken before its commit), so every record is looked at.
		return tx.Bucket(bktAudit).ForEach(func(k, v []byte) error {
			_, e, err := decodeEvent(k, v)
			if err != nil {
				return fmt.Errorf("%w: audit %v", ErrCorrupt, err)
			}
			if !since.IsZero() && e.Time.Before(since) {
				return nil
			}
			// Re-encoded rather than copied: one line per event even if a
			// stored value was tampered with to hold a newline.
			return enc.Encode(e)
		})
	})
	if err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("boltstore: export audit: %w", err)
	}
	return nil
}

// VerifyExport checks an export (ExportAudit's JSON lines) as VerifyAudit
// checks a database: sequence, links and hashes from its first record on,
// then the expectations. An export that starts after record 1 (of a pruned
// log, or cut with --since) is a segment: it is verified linked to the
// hash its first record names, which PrunedThrough reports as where it
// starts. It has no head: without an expectation, a cut tail is not seen.
func VerifyExport(r io.Reader, expect ...Expectation) (res VerifyResult, err error) {
	dec := json.NewDecoder(r)
	ch := auditChecker{expect: expect}
	for {
		var e broker.Event
		if err := dec.Decode(&e); err == io.EOF {
			break
		} else if err != nil {
			ch.fail(ch.v.NextSeq(), "record %d: %v (not an export, or edited)", ch.v.NextSeq(), err)
			break
		}
		if ch.v.Count() == 0 && ch.v.Last() == nil && e.Seq > 1 {
			ch.v.StartAfter(e.Seq-1, e.PrevHash)
			res.PrunedThrough = e.Seq - 1
		}
		if !hashable(e) {
			ch.fail(e.Seq, "record %d: time %s cannot be encoded (the record was edited)", e.Seq, e.Time)
			break
		}
		if err := ch.v.Next(e); err != nil {
			ch.fail(e.Seq, "%v", err)
			break
		}
		if !ch.meets(e) {
			break
		}
	}
	if ch.bad == 0 {
		last := ch.v.NextSeq() - 1
		for _, x := range expect {
			if x.Seq > last {
				ch.fail(last+1, "records %d to %d are missing: %s saw the chain reach record %d, the export ends at %d", last+1, x.Seq, x.Source, x.Seq, last)
				break
			}
		}
	}
	res.Verified, res.Checked, res.FirstBad, res.Problem = ch.v.Count(), ch.checked, ch.bad, ch.problem
	if l := ch.v.Last(); l != nil {
		res.LastHash = l.Hash
	}
	if !res.OK() {
		return res, fmt.Errorf("boltstore: verify export: %w: %s", ErrAuditBroken, res.Problem)
	}
	return res, nil
}

// readOnly runs fn on the file at path opened read-only. bbolt can panic
// on a damaged file; that becomes an ErrCorrupt error, because these
// functions exist to look at files that may have been damaged on purpose.
func readOnly(path string, fn func(*bolt.Tx) error) (err error) {
	db, err := openBolt(path, true, DefaultTimeout, 0)
	if err != nil {
		return err
	}
	defer db.Close()
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("boltstore: read %s: %w: %v", path, ErrCorrupt, p)
		}
	}()
	err = db.View(func(tx *bolt.Tx) error {
		if err := checkSchema(tx, true); err != nil {
			return err
		}
		if tx.Bucket(bktAudit) == nil {
			return fmt.Errorf("%w: the audit bucket is missing", ErrCorrupt)
		}
		return fn(tx)
	})
	if err != nil {
		return fmt.Errorf("boltstore: read %s: %w", path, err)
	}
	return nil
}
