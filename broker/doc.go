// Package broker holds latch's domain: leases, approvals, the Service that
// turns a verified identity and a decision into a recorded lease, and the
// interfaces it consumes (Backend, Store, Metrics). Adapters live in
// sub-packages (broker/boltstore, backends/...) and never import each other.
//
// The Service's parts, a file each: issuing (decide → intent → mint →
// conditional commit: issuing.go, mint.go, limits.go), the lease lifecycle
// (lifecycle.go: revoke, release, sweep; renew.go; revocations.go: the
// durable queue; reconcile.go), approvals (approval.go, with ApplyReview a
// pure transition), agents and the freeze (agents.go), and who may do what
// (authorize.go: Authorize, used by the HTTP API and the Service alike).
//
// Every lease commits with Conditions that the Store checks in the same
// transaction, so an operator's pause, quarantine or freeze wins every
// race with a request in flight.
package broker
