// Package broker holds latch's domain: leases, approvals, the Service that
// turns a verified identity and a decision into a recorded lease, and the
// interfaces it consumes (Backend, Store, Metrics). Adapters live in
// sub-packages (broker/boltstore, backends/...) and never import each other.
//
// The Service issues itself (decide → intent → mint → conditional
// commit: issuing.go, mint.go, limits.go) and hands out its other parts,
// each a type of its own over the same state: Leases, the lease lifecycle
// (leases.go: revoke, release, sweep; renew.go; revocations.go: the
// durable queue; groups.go: revocation by group, for backends that create
// credentials under a shared parent; policies.go: shared policies'
// collection; reconcile.go), Approvals (approval.go, with ApplyReview a
// pure transition), Agents with the freeze (agents.go) and Audit (events.go:
// the one follower of the event log; reject.go). Who may do what is
// authorize.go's Authorize, used by the HTTP API and the Service alike.
//
//	svc, err := broker.NewService(ctx, broker.Config{Store: st, Policy: p, Backends: b})
//	go svc.Run(ctx, nil)
//	issued, err := svc.Issue(ctx, req)
//	n, err := svc.Leases().Revoke(ctx, actor, reason, broker.RevokeSelector{Agent: id})
//
// Every lease commits with Conditions that the Store checks in the same
// transaction, so an operator's pause, quarantine or freeze wins every
// race with a request in flight.
package broker
