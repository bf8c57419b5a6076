package server

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/latchbroker/latch/broker/brokertest"
)

// The tests that mint in Vault do not call t.Parallel: TestServer_Kill9,
// which is parallel, takes every latch policy created in the shared Vault
// during its run for its own.

// cliResult is how a latch CLI child process ended.
type cliResult struct {
	stdout, stderr string
	code           int
}

func (r cliResult) String() string {
	return fmt.Sprintf("exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
}

// command is the built latch binary with args, connected to l, with env
// (KEY=VALUE) added to a minimal environment: no SPIFFE_ENDPOINT_SOCKET
// unless env sets it. Its output is safe to read while it runs.
func (l *latch) command(ctx context.Context, env []string, args ...string) (*exec.Cmd, *brokertest.SyncBuffer, *brokertest.SyncBuffer) {
	cmd := exec.CommandContext(ctx, latchBin, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + l.dir,
		"LATCH_ADDR=" + l.api, "LATCH_SERVER_ID=" + latchID.String()}, env...)
	stdout, stderr := new(brokertest.SyncBuffer), new(brokertest.SyncBuffer)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	return cmd, stdout, stderr
}

// cli runs the latch CLI to the end.
func (l *latch) cli(ctx context.Context, env []string, args ...string) cliResult {
	l.t.Helper()
	cmd, stdout, stderr := l.command(ctx, env, args...)
	err := cmd.Run()
	r := cliResult{stdout: stdout.String(), stderr: stderr.String()}
	if ee, ok := errors.AsType[*exec.ExitError](err); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		l.t.Fatalf("run latch %s: %v", strings.Join(args, " "), err)
	}
	return r
}

// svidFiles mints an X.509-SVID for id and returns the CLI's
// --cert/--key/--bundle flags naming its files.
func (l *latch) svidFiles(id string) []string {
	l.t.Helper()
	cert, key := l.writeSVID(id)
	return []string{"--cert", cert, "--key", key, "--bundle", filepath.Join(l.dir, "bundle.json")}
}
