// Package attest establishes who is calling: it verifies agents' and
// operators' SPIFFE identities (X.509-SVIDs over mutual TLS 1.3, JWT-SVIDs as
// bearer tokens) on the server side, and obtains the caller's own SVID on the
// client side, from the SPIFFE Workload API or from files.
//
// attest is a leaf: it imports go-spiffe, never broker.
package attest
