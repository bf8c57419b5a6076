package buckets

import (
	"fmt"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

var t0 = time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)

// take takes one token (two a minute, burst two) of key's bucket at at.
func take(s *Set, key string, at time.Time) bool {
	return s.Get(key, rate.Every(30*time.Second), 2, at).AllowN(at, 1)
}

// TestSet_Prune: buckets of keys seen long ago are dropped, so that
// endless keys cannot grow the set without bound, while a bucket still
// draining is kept and keeps limiting.
func TestSet_Prune(t *testing.T) {
	var s Set
	take(&s, "busy", t0)
	take(&s, "busy", t0)
	for i := range 3 * minPrune {
		take(&s, fmt.Sprintf("a%d", i), t0)
	}
	if take(&s, "busy", t0) {
		t.Fatal("busy's bucket was dropped while empty: its limit was reset")
	}
	// A minute on, every bucket has refilled: new keys prune them.
	later := t0.Add(time.Minute)
	for i := range 3 * minPrune {
		take(&s, fmt.Sprintf("b%d", i), later)
	}
	// What is held is the second wave: the keys of the last minute.
	if n := s.Len(); n > 3*minPrune {
		t.Fatalf("%d buckets held after two waves of %d keys a minute apart, want at most %d", n, 3*minPrune, 3*minPrune)
	}
}

// TestSet_Max: past Max, the fullest bucket makes room; an emptied one
// (a caller being limited) stays.
func TestSet_Max(t *testing.T) {
	s := Set{Max: 100}
	take(&s, "flood", t0)
	take(&s, "flood", t0)
	for i := range 1000 {
		at := t0.Add(time.Duration(i) * time.Millisecond)
		take(&s, fmt.Sprintf("k%d", i), at)
		if n := s.Len(); n > 100 {
			t.Fatalf("%d buckets held, Max is 100", n)
		}
	}
	if take(&s, "flood", t0.Add(time.Second)) {
		t.Fatal("the emptied bucket was dropped before fuller ones")
	}
}
