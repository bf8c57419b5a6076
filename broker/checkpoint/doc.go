// Package checkpoint signs and verifies audit checkpoints: statements that
// latch's audit chain had reached record Seq, whose hash is Hash, at Time.
//
// The head of the chain lives in the same database as the chain, so
// whoever can rewrite the file can cut its tail and move the head back;
// `latch audit verify` alone cannot see that. A checkpoint kept somewhere
// else (a webhook receiver, a log pipeline, a ticket) can: verify fails,
// naming the missing records, when the chain stops short of a checkpoint
// or disagrees with it.
//
// A checkpoint is a compact JWS (RFC 7515) signed with latch's own
// X.509-SVID key, its certificate chain in the x5c header, so that anyone
// holding the SPIFFE trust bundle can check it, years later too: the chain
// is verified at the checkpoint's time, not at the time of verification.
// The key never leaves latch's SVID source and is not in the database.
//
//	jws, err := checkpoint.Sign(checkpoint.Checkpoint{Seq: 812, Hash: h, Time: now}, svid)
//	cp, err := checkpoint.Verify(jws, bundle) // cp.ID is the signer's SPIFFE ID
package checkpoint
