package boltstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/latchbroker/latch/broker"
)

// Errors of this package. Test with errors.Is; they are wrapped with the
// file name and the operation.
var (
	// ErrLocked means another process (or another Store in this process)
	// holds the database file. bbolt allows one writer per file.
	ErrLocked = errors.New("database file is locked by another process")

	// ErrSchemaTooNew means the file was written by a newer latch whose
	// schema this build cannot read safely.
	ErrSchemaTooNew = errors.New("database schema is newer than this latch supports")

	// ErrNotLatch means the file is a bbolt database that latch did not
	// create, or one that was never initialised (opened read-only).
	ErrNotLatch = errors.New("not a latch database")

	// ErrInvalidChange means Apply refused a broker.Change before writing
	// anything (broker.Change.Check): a record without its ID, an ID with
	// a NUL byte, an unknown state. It is a bug in the caller, never a
	// reason to retry.
	ErrInvalidChange = broker.ErrInvalidChange

	// ErrCorrupt means a stored record cannot be decoded or the audit log
	// and its head disagree. Writes that would build on it are refused
	// (they also wrap broker.ErrStoreUnavailable): latch fails closed.
	ErrCorrupt = errors.New("database is corrupt")

	// ErrAuditBroken is returned by VerifyAudit when the chain fails; the
	// message names the first failing record.
	ErrAuditBroken = errors.New("audit chain is broken")
)

// Bucket names. See doc.go for what each holds.
var (
	bktMeta        = []byte("meta")
	bktLeases      = []byte("leases")
	bktIntents     = []byte("intents")
	bktIdxAgent    = []byte("idx_agent")
	bktIdxTask     = []byte("idx_task")
	bktIdxState    = []byte("idx_state")
	bktIdxExpiry   = []byte("idx_expiry")
	bktIdxRequest  = []byte("idx_request")
	bktRevocations = []byte("revocations")
	bktIdxDue      = []byte("idx_due")
	bktAgents      = []byte("agents")
	bktFreeze      = []byte("freeze")
	bktAudit       = []byte("audit")
	bktIdxLive     = []byte("idx_live")
	bktIdxInflight = []byte("idx_inflight")
	bktTemplates   = []byte("templates")

	allBuckets = [][]byte{
		bktMeta, bktLeases, bktIntents, bktIdxAgent, bktIdxTask, bktIdxState,
		bktIdxExpiry, bktIdxRequest, bktRevocations, bktIdxDue, bktAgents,
		bktFreeze, bktAudit, bktIdxLive, bktIdxInflight, bktTemplates,
		bktApprovals, bktIdxApprovalStatus, bktIdxApprovalAgent, bktIdxApprovalRequest, bktIdxApprovalDeadline,
	}

	keySchema    = []byte("schema")
	keyAuditHead = []byte("audit_head")
	keyPruned    = []byte("audit_pruned") // the last pruned record: where the log starts
	keyFreeze    = []byte("global")
	keyGrants    = []byte("grants")
)

// schemaVersion is the version this build writes. It is a variable only so
// that tests can exercise the migration path.
var schemaVersion uint64 = 2

// migrations[v] upgrades a file from schema v to v+1, inside the
// transaction that Open runs; a failure leaves the file as it was. Adding a
// bucket needs no migration (Open creates missing buckets); changing how a
// record or key is encoded does.
var migrations = map[uint64]func(*bolt.Tx) error{
	// Schema 2 adds the live index that budgets count.
	1: buildLive,
}

// DefaultTimeout is how long Open waits for the file lock: long enough to
// ride out a restart, short enough that a second server fails at once with
// a message instead of hanging.
const DefaultTimeout = time.Second

// Options configure Open. The zero value is usable.
type Options struct {
	// Now stamps audit events that arrive without a time. Default
	// time.Now.
	Now func() time.Time
	// BatchDelay is how long the committer, woken from idle, waits for
	// more writes to join the first transaction. Zero, the default,
	// commits at once: under load, writes gather anyway while the previous
	// transaction is on the disk, so waiting only adds latency (see
	// BenchmarkApply_Parallel). Negative is zero.
	BatchDelay time.Duration
	// Timeout bounds the wait for the file lock. Default DefaultTimeout.
	Timeout time.Duration
	// ReadOnly opens the file with a shared lock and no writes: Apply
	// returns broker.ErrStoreUnavailable. The file must exist and be
	// initialised.
	ReadOnly bool

	// maxSize caps the file size, so tests can fill the "disk".
	maxSize int
}

// Store is a broker.Store on one bbolt file. It is safe for concurrent use.
type Store struct {
	db   *bolt.DB
	c    *committer // nil when read-only
	path string
	now  func() time.Time
}

var _ broker.Store = (*Store)(nil)

// Open opens (creating if needed, unless ReadOnly) the latch database at
// path. Errors wrap ErrLocked when another process holds the file,
// ErrSchemaTooNew for a file from a newer latch, and ErrNotLatch for a
// foreign or uninitialised file.
func Open(path string, opts Options) (*Store, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	opts.BatchDelay = max(opts.BatchDelay, 0)
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	db, err := openBolt(path, opts.ReadOnly, opts.Timeout, opts.maxSize)
	if err != nil {
		return nil, err
	}
	// A rebuild that was interrupted left indexes half built: a writable
	// Open finishes it before anything reads them.
	var interrupted bool
	if opts.ReadOnly {
		err = db.View(func(tx *bolt.Tx) error {
			if err := checkSchema(tx, false); err != nil {
				return err
			}
			if err := checkBuckets(tx); err != nil {
				return err
			}
			if tx.Bucket(bktMeta).Get(keyReindex) != nil {
				return fmt.Errorf("%w: an index rebuild was interrupted; open the file read-write once to finish it", ErrCorrupt)
			}
			return nil
		})
	} else {
		err = db.Update(func(tx *bolt.Tx) error {
			if err := initSchema(tx); err != nil {
				return err
			}
			interrupted = tx.Bucket(bktMeta).Get(keyReindex) != nil
			return nil
		})
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("boltstore: open %s: %w", path, err)
	}
	s := &Store{db: db, path: path, now: opts.Now}
	if opts.ReadOnly {
		return s, nil
	}
	if interrupted {
		if err := s.reindex(nil); err != nil {
			db.Close()
			return nil, err
		}
	}
	s.c = newCommitter(db, opts.BatchDelay)
	return s, nil
}

// openBolt opens the file and turns bbolt's lock timeout into an error a
// person can act on.
func openBolt(path string, readOnly bool, timeout time.Duration, maxSize int) (*bolt.DB, error) {
	o := &bolt.Options{
		Timeout:  timeout,
		ReadOnly: readOnly,
		MaxSize:  maxSize,
		// The hashmap freelist stays fast when a mass revocation frees
		// many pages. The freelist is still synced with each commit, so
		// opening a large file does not scan every page to rebuild it.
		FreelistType: bolt.FreelistMapType,
	}
	db, err := bolt.Open(path, 0o600, o)
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return nil, fmt.Errorf("boltstore: open %s: %w (waited %s; is a latch server using it? stop it, or work on a copy)", path, ErrLocked, timeout)
	case err != nil:
		return nil, fmt.Errorf("boltstore: open %s: %w", path, err)
	}
	return db, nil
}

// initSchema brings a writable file to the current schema: initialise an
// empty file, migrate an older one, refuse a newer one.
func initSchema(tx *bolt.Tx) error {
	meta := tx.Bucket(bktMeta)
	if meta == nil {
		if !isEmpty(tx) {
			return fmt.Errorf("%w: it has buckets but no latch meta bucket", ErrNotLatch)
		}
		for _, name := range allBuckets {
			if _, err := tx.CreateBucket(name); err != nil {
				return err
			}
		}
		return putSchema(tx.Bucket(bktMeta), schemaVersion)
	}
	if err := checkSchema(tx, true); err != nil {
		return err
	}
	for _, name := range allBuckets {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return err
		}
	}
	meta = tx.Bucket(bktMeta)
	for v := getSchema(meta); v < schemaVersion; v++ {
		m, ok := migrations[v]
		if !ok {
			return fmt.Errorf("no migration from schema %d to %d", v, v+1)
		}
		if err := m(tx); err != nil {
			return fmt.Errorf("migrate schema %d to %d: %w", v, v+1, err)
		}
		if err := putSchema(meta, v+1); err != nil {
			return err
		}
	}
	return nil
}

// checkSchema refuses a file this build cannot read. A read-only opener
// cannot migrate, so it also refuses an older file.
func checkSchema(tx *bolt.Tx, canMigrate bool) error {
	meta := tx.Bucket(bktMeta)
	if meta == nil {
		return fmt.Errorf("%w: no meta bucket", ErrNotLatch)
	}
	v := getSchema(meta)
	switch {
	case v == 0:
		return fmt.Errorf("%w: no schema version", ErrNotLatch)
	case v > schemaVersion:
		return fmt.Errorf("%w: file has schema %d, this latch knows up to %d; upgrade latch", ErrSchemaTooNew, v, schemaVersion)
	case v < schemaVersion && !canMigrate:
		return fmt.Errorf("file has schema %d and needs migrating to %d: open it once read-write with this latch", v, schemaVersion)
	}
	return nil
}

// checkBuckets makes sure every bucket exists, for openers that cannot
// create them: the reads assume they do.
func checkBuckets(tx *bolt.Tx) error {
	for _, name := range allBuckets {
		if tx.Bucket(name) == nil {
			return fmt.Errorf("%w: bucket %s is missing; open the file read-write once to add it", ErrCorrupt, name)
		}
	}
	return nil
}

func isEmpty(tx *bolt.Tx) bool {
	k, _ := tx.Cursor().First()
	return k == nil
}

func getSchema(meta *bolt.Bucket) uint64 {
	v := meta.Get(keySchema)
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

func putSchema(meta *bolt.Bucket, v uint64) error {
	return meta.Put(keySchema, binary.BigEndian.AppendUint64(nil, v))
}

// Path returns the database file's path.
func (s *Store) Path() string { return s.path }

// Close closes the file. Calls after Close return errors that wrap
// broker.ErrStoreUnavailable.
func (s *Store) Close() error {
	if s.c != nil {
		s.c.close()
	}
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("boltstore: close %s: %w", s.path, err)
	}
	return nil
}

// Backup writes a consistent copy of the whole database to w while the
// store keeps serving, so VerifyAudit and ExportAudit can run on the copy;
// a plain cp of a file being written may be torn. It is one read
// transaction for as long as w takes: if a write must grow the file's
// mapping meanwhile, it waits for the backup to end.
func (s *Store) Backup(ctx context.Context, w io.Writer) (int64, error) {
	var n int64
	err := s.view(ctx, "backup", func(tx *bolt.Tx) error {
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	return n, err
}

// view runs fn in a read transaction and classifies its error.
func (s *Store) view(ctx context.Context, op string, fn func(*bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return classify(op, s.db.View(fn))
}

// classify wraps err for the caller: the caller's own conditions (not
// found, cancelled, invalid) pass through with context; everything else
// means the store cannot serve and wraps broker.ErrStoreUnavailable.
func classify(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case errors.Is(err, broker.ErrLeaseNotFound), errors.Is(err, broker.ErrApprovalNotFound), errors.Is(err, ErrInvalidChange),
		errors.Is(err, broker.ErrStoreUnavailable):
		return fmt.Errorf("boltstore: %s: %w", op, err)
	}
	return fmt.Errorf("boltstore: %s: %w: %w", op, broker.ErrStoreUnavailable, err)
}

// submit hands fn to the group commit; the channel gets its result.
func (s *Store) submit(fn func(*bolt.Tx) error) <-chan error {
	return s.c.submit(fn)
}
