package boltstore

import (
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// pruneBatch is how many records one prune transaction deletes.
const pruneBatch = 10000

// PruneAudit deletes the audit records up to and including record
// through from the database at path, which no server may hold, and keeps
// that record's sequence number and hash as the anchor the rest of the
// chain links to, so that VerifyAudit still verifies what is left. It
// first verifies the whole chain and refuses to prune one that does not
// verify: pruning must not launder an edit. Deletion goes in batches, each
// transaction moving the anchor with the records it deletes, so a crash
// midway leaves a shorter, still verifiable log; running it again
// finishes.
//
// Export the records first (ExportAudit): once pruned, they exist only in
// the export.
func PruneAudit(path string, through uint64) error {
	res, err := VerifyAudit(path, nil)
	if err != nil {
		return err
	}
	switch {
	case through > res.HeadSeq:
		return fmt.Errorf("boltstore: prune through %d: the log ends at record %d", through, res.HeadSeq)
	case through <= res.PrunedThrough:
		return nil // pruned already
	}
	db, err := openBolt(path, false, DefaultTimeout, 0)
	if err != nil {
		return err
	}
	defer db.Close()
	for done := false; !done; {
		err := db.Update(func(tx *bolt.Tx) error {
			var err error
			done, err = pruneSome(tx, through)
			return err
		})
		if err != nil {
			return fmt.Errorf("boltstore: prune audit: %w", err)
		}
	}
	return nil
}

// pruneSome deletes up to pruneBatch records from the start of the log,
// none past through, and moves the anchor to the last one deleted.
func pruneSome(tx *bolt.Tx, through uint64) (done bool, err error) {
	if err := checkSchema(tx, false); err != nil {
		return false, err
	}
	meta, audit := tx.Bucket(bktMeta), tx.Bucket(bktAudit)
	var anchor auditHead
	c := audit.Cursor()
	n := 0
	for k, v := c.First(); k != nil && n < pruneBatch; k, v = c.First() {
		seq, e, err := decodeEvent(k, v)
		if err != nil {
			return false, fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
		if seq > through {
			break
		}
		if err := c.Delete(); err != nil {
			return false, err
		}
		anchor, n = auditHead{seq: seq, hash: e.Hash}, n+1
	}
	if n == 0 {
		return true, nil
	}
	if err := putAnchor(meta, keyPruned, anchor); err != nil {
		return false, err
	}
	return anchor.seq == through, nil
}
