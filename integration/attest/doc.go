// Package attest tests latch's attest package against a real SPIRE server
// and agent started by integration/stack: workloads get their SVIDs from
// the agent's Workload API, JWT-SVIDs are minted by the SPIRE server, and
// SVID rotation is SPIRE's own. Its benchmarks put the cost of verifying a
// request next to a Vault token-create call on the same machine.
//
// The tests run the test binary a second time as the "agent" process
// (see TestMain), so identification crosses a real process boundary.
package attest
