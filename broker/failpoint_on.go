//go:build failpoints

package broker

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
)

// Failpoints exist only in test builds (go build -tags failpoints): the
// crash tests in integration/broker run latch in a child process and kill
// it with SIGKILL at one of the points named in issue.go and revoke.go,
// then check what a restart makes of it.
//
// LATCH_FAILPOINT=name kills the process the first time it reaches the
// failpoint called name; LATCH_FAILPOINT=name@N the Nth time (to die in
// the middle of a bulk revocation rather than at its start).

var failpointSpec = sync.OnceValues(func() (string, int64) {
	name, n, ok := strings.Cut(os.Getenv("LATCH_FAILPOINT"), "@")
	if !ok {
		return name, 1
	}
	hit, err := strconv.ParseInt(n, 10, 64)
	if err != nil || hit < 1 {
		panic("LATCH_FAILPOINT: want name or name@N with N >= 1, got " + os.Getenv("LATCH_FAILPOINT"))
	}
	return name, hit
})

var failpointHits atomic.Int64

// failpoint kills the process with SIGKILL, as kill -9 does, when
// LATCH_FAILPOINT selects this point and hit.
func failpoint(name string) {
	want, hit := failpointSpec()
	if want != name || failpointHits.Add(1) != hit {
		return
	}
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // SIGKILL cannot be caught; nothing runs past this point
}
