package httpapi

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
)

// ListenUnix listens on a unix socket at path for the admin socket, with
// file mode 0600: only latch's own user (and root) can connect, which is
// the socket's whole authentication.
//
// The socket is bound in a private temporary directory, restricted, then
// renamed into place, so it is never reachable with a wider mode. A stale socket
// at path (one nobody listens on, left by a crash) is replaced; any other
// file there, or a live socket, is an error. The directory must exist
// and should not be writable by others.
func ListenUnix(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("httpapi: admin socket %s: a file that is not a socket is in the way", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("httpapi: admin socket %s: another process is listening on it", path)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("httpapi: admin socket: %w", err)
	}
	// Bind inside a fresh directory of mode 0700, so nobody else can reach
	// the socket before its own mode is set, whatever the umask.
	dir, err := os.MkdirTemp(filepath.Dir(path), ".latch-admin-")
	if err != nil {
		return nil, fmt.Errorf("httpapi: admin socket: %w", err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "sock")
	ln, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, fmt.Errorf("httpapi: admin socket: %w", err)
	}
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(false) // the name changes below; unlink the final one on Close
	fail := func(err error) (net.Listener, error) {
		ul.Close()
		return nil, fmt.Errorf("httpapi: admin socket %s: %w", path, err)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	return &unixListener{UnixListener: ul, path: path}, nil
}

// unixListener removes its socket file when closed.
type unixListener struct {
	*net.UnixListener
	path string
}

func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	if rerr := os.Remove(l.path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) && err == nil {
		err = rerr
	}
	return err
}
