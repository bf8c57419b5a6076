package httpapi

import (
	"fmt"
	"sync"
	"time"

	"github.com/latchbroker/latch/broker"
)

// streamSlots bounds the open event streams, in all and per caller, so
// that one viewer cannot hold every stream the server serves.
type streamSlots struct {
	mu        sync.Mutex
	max       int
	perCaller int
	open      int
	byCaller  map[string]int
}

func newStreamSlots(max, perCaller int) *streamSlots {
	return &streamSlots{max: max, perCaller: perCaller, byCaller: map[string]int{}}
}

// take reserves a stream for caller; release gives it back. Past either
// bound it returns an ELIMIT error saying which.
func (s *streamSlots) take(caller string) (release func(), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.open >= s.max:
		return nil, &broker.Error{Code: broker.ELIMIT, Message: fmt.Sprintf("%d event streams are open, the most this server serves", s.max),
			Reasons: []string{"too_many_streams"}, RetryAfter: 10 * time.Second}
	case s.byCaller[caller] >= s.perCaller:
		return nil, &broker.Error{Code: broker.ELIMIT, Message: fmt.Sprintf("you have %d event streams open, the most one caller may: close one first", s.perCaller),
			Reasons: []string{"too_many_streams_for_caller"}, RetryAfter: 10 * time.Second}
	}
	s.open++
	s.byCaller[caller]++
	return sync.OnceFunc(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.open--
		if s.byCaller[caller]--; s.byCaller[caller] == 0 {
			delete(s.byCaller, caller) // bounded by the open streams
		}
	}), nil
}
