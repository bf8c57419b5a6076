// Package broker holds latch's domain: leases, approvals, the Service that
// turns a verified identity and a decision into a recorded lease, and the
// interfaces it consumes (Backend, Store, Auditor). Adapters live in
// sub-packages (broker/boltstore, backends/...) and never import each other.
package broker
