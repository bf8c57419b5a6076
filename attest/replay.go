package attest

import (
	"container/heap"
	"sync"
	"time"
)

// replayCache remembers JWT-SVIDs already accepted until they expire.
//
// It is bounded: when it is full of tokens that are still valid, a new
// token is refused (KindUnavailable) rather than an old entry evicted,
// because evicting a live entry would let that token be replayed. Only
// tokens that passed every other check are recorded, so filling the cache
// takes valid tokens from a trusted trust domain, not forged ones.
type replayCache struct {
	mu   sync.Mutex
	max  int
	seen map[string]time.Time // key → forget after
	exp  expiryHeap
}

func newReplayCache(max int) *replayCache {
	return &replayCache{max: max, seen: make(map[string]time.Time)}
}

// add records key until forgetAt. It returns KindReplayed when the key is
// already recorded and KindUnavailable when the cache is full.
func (c *replayCache) add(key string, forgetAt, now time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.exp) > 0 && !c.exp[0].at.After(now) {
		e := heap.Pop(&c.exp).(expiryEntry)
		delete(c.seen, e.key)
	}
	if _, ok := c.seen[key]; ok {
		return refuse(KindReplayed, nil, "JWT-SVID already used: fetch a new one for each request")
	}
	if len(c.seen) >= c.max {
		return refuse(KindUnavailable, nil, "too many bearer tokens in flight, retry later")
	}
	c.seen[key] = forgetAt
	heap.Push(&c.exp, expiryEntry{key: key, at: forgetAt})
	return nil
}

type expiryEntry struct {
	key string
	at  time.Time
}

// expiryHeap is a min-heap on expiry, so purging expired entries costs
// O(log n) each instead of a scan per request.
type expiryHeap []expiryEntry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(expiryEntry)) }
func (h *expiryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}
