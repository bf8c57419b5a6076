// Package boltstore implements broker.Store on bbolt: leases and their
// indexes, intents, the revocation queue, agent states, the global freeze,
// approvals and the hash-chained audit log, in one file.
//
// # Usage
//
//	st, err := boltstore.Open("/var/lib/latch/latch.db", boltstore.Options{Now: clock.Now})
//	if err != nil { ... } // a second opener fails fast, naming the file
//	defer st.Close()
//	svc, err := broker.NewService(ctx, broker.Config{Store: st, ...})
//
// Offline, on a copy of the file (or on the file itself when no server holds
// it); a running server writes a consistent copy with Store.Backup:
//
//	res, err := boltstore.VerifyAudit("latch.db", progress) // names the first bad record
//	err = boltstore.ExportAudit("latch.db", since, os.Stdout) // JSON lines
//	err = boltstore.Reindex("latch.db", progress)            // rebuild every index
//
// # Writes
//
// Every broker.Change is validated and encoded first, then handed to the
// store's committer, which is group commit: changes queue up while a
// transaction is on the disk and all go together in the next one, so under
// load many Applys share one fsync and the batch grows with the load, while
// a lone change commits at once. bbolt's DB.Batch does the same with a
// fixed timer that every write waits out, idle disk or not; issuance writes
// twice (intent, then lease), so it paid the timer twice. Against DB.Batch
// with a 1 ms timer the committer gives about 1.5× the issuances per second
// at 32 callers and halved the store's share of a lone issuance, measured
// with BenchmarkApply_Parallel and BenchmarkApply_WithMint when the
// committer replaced it.
//
// A change that fails (its own error or a panic) is taken out of its batch,
// the rest run again without it, and it runs alone, so one bad change never
// fails another; the function that writes a change therefore depends only
// on the transaction and may run more than once.
//
// # Buckets
//
// Keys that combine fields use a NUL separator; Apply refuses IDs that
// contain NUL, so a prefix scan never runs into a neighbouring ID. Times in
// keys are big-endian, sign-flipped Unix nanoseconds, so byte order is time
// order. Lease IDs are ULIDs, which sort by issue time: walking an index
// prefix backwards yields newest first.
//
//	meta         "schema"      → uint64 schema version (currently 2)
//	             "audit_head"  → uint64 seq ‖ hex hash of the last audit event
//	             "reindex"     → present while Reindex rebuilds the indexes
//	             "grants"      → []broker.Grant JSON (kept in meta, which
//	                             every file has, so old files read it too)
//	leases       lease ID      → broker.Lease JSON
//	intents      lease ID      → broker.Lease JSON (a mint in progress)
//	idx_agent    agent ␀ ID    → lease state
//	idx_task     task ␀ ID     → lease state
//	idx_state    state ␀ ID    → empty
//	idx_expiry   time ‖ ID     → empty, active leases only (ExpiringBefore)
//	idx_request  agent ␀ reqID → lease ID (LeaseByRequest)
//	revocations  lease ID      → broker.Revocation JSON (the durable queue)
//	idx_due      time ‖ ID     → empty, by NextAttempt (DueRevocations)
//	agents       agent ID      → broker.AgentRecord JSON
//	freeze       "global"      → broker.FreezeState JSON
//	templates    name          → template version (what leases commit against)
//	idx_live     agent ␀ ID    → task (␀ shared policy (␀ group)), every live lease (budgets, policy and group collection)
//	idx_inflight agent ␀ ID    → the same, every intent
//	policies_deleting name     → empty, shared policies being deleted (made by the first mark)
//	groups_retired group       → time marked (Unix ns), groups a bulk revocation retired (made by the first mark)
//	audit        uint64 seq    → broker.Event JSON
//
//	approvals              approval ID   → broker.Approval JSON
//	idx_approval_status    status ␀ ID   → empty
//	idx_approval_agent     agent ␀ ID    → approval status
//	idx_approval_request   agent ␀ reqID → approval ID (ApprovalByRequest)
//	idx_approval_deadline  time ‖ ID     → empty, open approvals only: ExpiresAt
//	                                       while pending, PickupBy once approved
//	                                       (ExpiringApprovals)
//
// The agent and task indexes carry the lease state as their value, so the
// common "live leases of this agent" scan skips dead leases without
// decoding them. The audit head is written in the same transaction as the
// events; an audit bucket that ends before the head was truncated, and one
// whose last hash differs from the head was rewritten. Putting a lease reads
// its previous record first and removes that version's index entries, so an
// index never points at a state the lease has left.
//
// # Schema
//
// Open initialises an empty file, creates any missing bucket (adding a
// bucket needs no version bump), runs the migrations from the file's schema
// version to the current one in the same transaction, and refuses a file
// whose schema is newer than this build knows. The indexes are stored, not
// rebuilt at start, so opening a file of a million leases takes
// milliseconds and no memory per lease (BenchmarkOpen). A migration that
// changes an index's encoding sets the "reindex" marker; Open then rebuilds
// the indexes before it serves, as it does after an interrupted Reindex.
package boltstore
