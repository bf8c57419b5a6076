//go:build !failpoints

package broker

// failpoint marks a point where the crash tests kill latch (see
// failpoint_on.go). Without the failpoints build tag it is empty and the
// compiler inlines it away.
func failpoint(string) {}
