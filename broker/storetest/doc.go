// Package storetest is the test suite of broker.Store: one suite that every
// implementation (boltstore, and the etcd store to come) runs, so that they
// keep the same contract — refusing what broker.Change.Check refuses,
// atomic changes, conditions, indexes that follow every update, the audit
// chain, the queue — and the Service can run on either.
//
//	func TestSuite(t *testing.T) {
//		storetest.Run(t, storetest.Harness{
//			Open: func(t testing.TB, now func() time.Time) broker.Store { ... },
//		})
//	}
//
// What the suite cannot see through the Store's reads (stale index keys, a
// refused change that left a key behind) an implementation checks in
// Harness.Check. The helpers (T0, Lease, Ev, Apply...) serve the
// implementations' own tests too.
package storetest
