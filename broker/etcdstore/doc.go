// Package etcdstore is broker.Store on etcd, for latch replicas that run
// active-active: every replica serves, and the duties run on the one
// elected (cmd/latch). It passes broker.Store's whole suite
// (broker/storetest) on a real three-member cluster.
//
//	st, err := etcdstore.New(client, "/latch", etcdstore.Options{})
//
// How it keeps the contract:
//
//   - Keys under one prefix: a record per key (l/<lease>, i/<intent>,
//     q/<revocation>, a/<agent>, p/<approval>...) and an entry per key in
//     each index (x/<index>/<field>␀<id>, or a 16-hex-digit time then the
//     ID for deadlines), as boltstore's buckets; IDs never hold a NUL byte
//     (broker.Change.Check). The audit chain is audit/e/<seq> and
//     audit/head.
//   - Apply is optimistic (txn.go): a transaction reads what its changes
//     depend on at one revision — the records they replace, the agent, the
//     freeze, the audit head, the ranges their conditions count — decides
//     the conditions in Go, and commits only if every key read is unchanged
//     (ModRevision, or CreateRevision 0 for one that was absent) and no key
//     of a range read was created or modified since; otherwise it reads
//     again. Another replica's change in between makes it retry, so the
//     changes of all replicas are serializable and the chain is one chain.
//   - A replica's concurrent changes share a transaction (commit.go): each
//     is written on the state its predecessors left, one that fails a
//     condition is taken out alone.
//   - A change made under WithFence (the duties, under their election)
//     commits only while the fence holds: a replica that lost the
//     election writes nothing of it (ErrFenced); its other changes are
//     not fenced.
//   - WatchEvents (broker.EventWatcher) watches the audit log: every
//     replica's events, for each replica's live feed.
//   - etcd bounds a transaction: run the cluster with --max-txn-ops 10000
//     and --max-request-bytes 10485760 (a bulk revocation writes hundreds
//     of leases in one change).
package etcdstore
