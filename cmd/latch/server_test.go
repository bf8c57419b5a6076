package main

import (
	"runtime/debug"
	"testing"
)

// TestSetGC checks the server's GC target: serverGOGC unless GOGC is set,
// in which case the runtime's reading of it stands.
func TestSetGC(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	t.Run("Unset", func(t *testing.T) {
		t.Setenv("GOGC", "")
		debug.SetGCPercent(100)
		setGC()
		if got := debug.SetGCPercent(100); got != serverGOGC {
			t.Errorf("GC percent %d, want %d", got, serverGOGC)
		}
	})
	t.Run("Set", func(t *testing.T) {
		t.Setenv("GOGC", "150")
		debug.SetGCPercent(150) // as the runtime read it at start
		setGC()
		if got := debug.SetGCPercent(100); got != 150 {
			t.Errorf("GC percent %d, want GOGC's 150", got)
		}
	})
}
