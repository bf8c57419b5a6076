package etcdstore

import (
	"errors"
	"fmt"

	"github.com/latchbroker/latch/broker"
)

// ErrCorrupt means a record under the prefix cannot be read back (it was
// not written by latch, or was edited), or the audit head does not match
// the log.
var ErrCorrupt = errors.New("corrupt record")

// ErrFenced means a change was refused because its Fence failed: this
// replica no longer holds what the fence names (another may hold it
// now), and nothing of the change was written.
var ErrFenced = errors.New("fenced: this replica no longer holds the etcd election its change was made under")

// unavailable wraps an etcd error: the store cannot serve right now.
func unavailable(what string, err error) error {
	return fmt.Errorf("etcdstore: %s: %w: %w", what, broker.ErrStoreUnavailable, err)
}
