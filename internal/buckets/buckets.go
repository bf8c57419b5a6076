package buckets

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// minPrune is the size below which a Set never prunes.
const minPrune = 1024

// Set holds token buckets by key. The zero Set is ready to use and
// unbounded but for pruning; set Max to bound it. It is safe for
// concurrent use.
type Set struct {
	// Max bounds the number of buckets (0: no bound but pruning). When a
	// prune leaves more, the fullest buckets are dropped first.
	Max int

	mu      sync.Mutex
	m       map[string]*rate.Limiter
	pruneAt int
}

// Get returns key's bucket, made with limit and burst the first time.
// Callers that change a key's limit should put the limit in the key.
func (s *Set) Get(key string, limit rate.Limit, burst int, now time.Time) *rate.Limiter {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m, s.pruneAt = map[string]*rate.Limiter{}, minPrune
	}
	lim, ok := s.m[key]
	if !ok {
		if len(s.m) >= s.pruneAt || (s.Max > 0 && len(s.m) >= s.Max) {
			s.prune(now)
		}
		lim = rate.NewLimiter(limit, burst)
		s.m[key] = lim
	}
	return lim
}

// Peek returns key's bucket, nil when it has none: a look that makes no
// bucket, for callers that only spend on some requests.
func (s *Set) Peek(key string) *rate.Limiter {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[key]
}

// prune drops the buckets that are full at now, then, past Max, the
// fullest of the others.
func (s *Set) prune(now time.Time) {
	for k, lim := range s.m {
		if lim.TokensAt(now) >= float64(lim.Burst()) {
			delete(s.m, k)
		}
	}
	for s.Max > 0 && len(s.m) >= s.Max {
		s.dropFullest(now)
	}
	s.pruneAt = max(minPrune, 2*len(s.m))
}

// dropFullest drops the bucket with the most tokens: the caller that is
// least limited loses least by starting afresh.
func (s *Set) dropFullest(now time.Time) {
	var key string
	best := -1.0
	for k, lim := range s.m {
		if t := lim.TokensAt(now); t > best {
			key, best = k, t
		}
	}
	delete(s.m, key)
}

// Len is how many buckets are held.
func (s *Set) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}
