package stack

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"
)

// process is one child process whose output goes to a log file in the
// stack's directory, so that a failing test can print it.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has exited
	err     error         // exit error, valid after done is closed
}

// startProcess starts bin with args, logging to dir/name.log. The child gets
// its own process group (so stop reaches its children too) and is killed if
// the test binary dies first, so that a crashed test leaves nothing behind.
func startProcess(dir, name string, cred *syscall.Credential, env []string, bin string, args ...string) (*process, error) {
	logPath := dir + "/" + name + ".log"
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("stack: %s: open log: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:    true,
		Pdeathsig:  syscall.SIGKILL,
		Credential: cred,
	}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("stack: start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has already ended, with its error.
func (p *process) exited() (bool, error) {
	select {
	case <-p.done:
		return true, fmt.Errorf("stack: %s exited: %v (log: %s)", p.name, p.err, p.logPath)
	default:
		return false, nil
	}
}

// stop sends SIGTERM to the process group and SIGKILL after grace.
func (p *process) stop(grace time.Duration) {
	if p == nil {
		return
	}
	pgid := -p.cmd.Process.Pid
	_ = syscall.Kill(pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(pgid, syscall.SIGKILL)
		<-p.done
	}
	// Children that ignored SIGTERM and outlived the leader.
	_ = syscall.Kill(pgid, syscall.SIGKILL)
}

// waitFor polls ready until it returns nil, the process exits, or the
// context ends; the last readiness error is reported on timeout.
func waitFor(ctx context.Context, p *process, what string, ready func(context.Context) error) error {
	var last error
	for {
		if last = ready(ctx); last == nil {
			return nil
		}
		if dead, err := p.exited(); dead {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stack: %s not ready: %v (log: %s)", what, last, p.logPath)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// FreePort returns a loopback TCP port that is free now, and whose
// successor is free too when pair is set (Vault's dev cluster listener
// takes port+1). It picks from below Linux's ephemeral range (32768 and
// up by default), where the kernel places outgoing connections and
// ":0" listeners: a port found there could be taken by any connection
// before the process that is given it binds it.
func FreePort(pair bool) (int, error) {
	const lo, hi = 20000, 32700
	for range 200 {
		port := lo + rand.IntN(hi-lo)
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			continue
		}
		if !pair {
			l.Close()
			return port, nil
		}
		l2, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port+1))
		l.Close()
		if err == nil {
			l2.Close()
			return port, nil
		}
	}
	return 0, errors.New("stack: no free loopback port found in 20000-32700")
}
