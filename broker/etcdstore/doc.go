// Package etcdstore is broker.Store on etcd, for latch replicas that run
// active-active (issue 15). It is being built: what exists is the audit
// chain (audit.go), which replicas append to with a compare-and-swap on
// its head, so that they write one chain in one order. It is not yet a
// broker.Store, and no configuration selects it.
//
// The design the rest follows:
//
//   - Keys under one prefix (default /latch), a record per key and an
//     index per key (index/<name>/<field>␀<id>), as boltstore's buckets;
//     IDs never hold a NUL byte (broker.Change.Check).
//   - Apply is one etcd transaction per change: it reads what the change
//     depends on at one revision (old versions of the records it replaces,
//     the agent, the freeze, the audit head, the ranges its conditions
//     count), decides the conditions in Go, and commits the writes If every
//     key read is unchanged (ModRevision, or CreateRevision 0 for a key
//     that was absent) and no key of a range read was created or modified
//     since (a ModRevision compare over the range); otherwise it reads
//     again and retries. A failed condition writes nothing.
//   - etcd bounds a transaction (--max-txn-ops, default 128; the request
//     size, default 1.5 MiB): bulk revocations write hundreds of leases at
//     once, so the cluster needs --max-txn-ops of a few thousand.
//   - Background duties run on the replica holding an etcd election per
//     duty; writes of a duty compare the election key's revision, so a
//     replica that lost its lease cannot write for it.
//   - Live views watch the audit prefix from a revision, in chain order.
package etcdstore
