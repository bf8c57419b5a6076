package broker

import (
	"fmt"
	"testing"
	"time"

	"github.com/latchbroker/latch/templates"
)

// TestLimiters_Prune: buckets of agents that asked long ago are dropped,
// so that a pattern matching endless IDs cannot grow the map without
// bound, while a bucket still draining is kept and keeps limiting.
func TestLimiters_Prune(t *testing.T) {
	var l limiters
	r := templates.Rate{N: 2, Per: time.Minute}
	t0 := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	take := func(agent string, at time.Time) bool { return l.get(agent, r, at).AllowN(at, 1) }

	// A busy agent empties its bucket just before the flood.
	take("busy", t0)
	take("busy", t0)
	for i := range 3 * minPrune {
		take(fmt.Sprintf("a%d", i), t0)
	}
	if take("busy", t0) {
		t.Fatal("busy's bucket was dropped while empty: its limit was reset")
	}
	// A minute on, every bucket has refilled: new agents prune them.
	later := t0.Add(time.Minute)
	for i := range 3 * minPrune {
		take(fmt.Sprintf("b%d", i), later)
	}
	// What is held is the second wave: the agents of the last minute.
	if n := l.size(); n > 3*minPrune {
		t.Fatalf("%d buckets held after two waves of %d agents a minute apart, want at most %d", n, 3*minPrune, 3*minPrune)
	}
}
