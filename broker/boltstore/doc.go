// Package boltstore implements broker.Store on bbolt: leases and their
// indexes, intents, the revocation queue, approvals, agent states and the
// hash-chained audit log, in one file.
package boltstore
