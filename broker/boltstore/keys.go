package boltstore

import (
	"bytes"
	"encoding/binary"
	"math"
	"time"

	bolt "go.etcd.io/bbolt"
)

// sep joins the fields of a composite key. Apply refuses IDs containing it
// (broker.Change.Check), so "agent ␀" is a prefix of that agent's keys and
// of no other agent's. IDs are at most broker.MaxIDLen bytes: two fields
// and a time stay far below bbolt's 32 KiB key limit.
const sep = 0

// pairKey returns a ␀ b.
func pairKey(a, b string) []byte {
	k := make([]byte, 0, len(a)+1+len(b))
	k = append(k, a...)
	k = append(k, sep)
	return append(k, b...)
}

// prefixKey returns a ␀, the prefix of every pairKey(a, ·).
func prefixKey(a string) []byte {
	k := make([]byte, 0, len(a)+1)
	k = append(k, a...)
	return append(k, sep)
}

var (
	minTime = time.Unix(0, math.MinInt64)
	maxTime = time.Unix(0, math.MaxInt64)
)

// timeOrd maps t to a uint64 whose big-endian bytes sort as t does. Times
// outside int64 nanoseconds (the zero time, year 1) are clamped, where
// UnixNano would be undefined; the sign bit is flipped so that times before
// 1970 sort before those after.
func timeOrd(t time.Time) uint64 {
	var n int64
	switch {
	case t.Before(minTime):
		n = math.MinInt64
	case t.After(maxTime):
		n = math.MaxInt64
	default:
		n = t.UnixNano()
	}
	return uint64(n) ^ (1 << 63)
}

// timeKey returns time ‖ id.
func timeKey(t time.Time, id string) []byte {
	k := make([]byte, 8, 8+len(id))
	binary.BigEndian.PutUint64(k, timeOrd(t))
	return append(k, id...)
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

// prefixIter walks the keys of one prefix backwards: newest lease first in
// an index keyed prefix ␀ leaseID, or in the leases bucket itself when the
// prefix is empty.
type prefixIter struct {
	c      *bolt.Cursor
	prefix []byte
	k, v   []byte
}

// newPrefixIter positions a backward iterator on the last key with prefix
// whose lease ID is below before (the last of the prefix when before is
// nil): where a listing left off.
func newPrefixIter(c *bolt.Cursor, prefix, before []byte) *prefixIter {
	it := &prefixIter{c: c, prefix: prefix}
	var seek []byte
	switch {
	case before != nil:
		seek = append(bytes.Clone(prefix), before...)
	case len(prefix) > 0:
		// Every prefix ends in sep (0x00); the first key past the prefix
		// is at or after the prefix with its last byte raised to 0x01.
		seek = bytes.Clone(prefix)
		seek[len(seek)-1]++
	}
	var k, v []byte
	if seek != nil {
		k, v = c.Seek(seek)
	}
	if k == nil {
		k, v = c.Last()
	} else {
		k, v = c.Prev()
	}
	it.set(k, v)
	return it
}

func (it *prefixIter) set(k, v []byte) {
	if k == nil || !bytes.HasPrefix(k, it.prefix) {
		it.k, it.v = nil, nil
		return
	}
	it.k, it.v = k, v
}

// id is the lease ID of the current key, nil when done.
func (it *prefixIter) id() []byte {
	if it.k == nil {
		return nil
	}
	return it.k[len(it.prefix):]
}

func (it *prefixIter) next() { it.set(it.c.Prev()) }
