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

// unavailable wraps an etcd error: the store cannot serve right now.
func unavailable(what string, err error) error {
	return fmt.Errorf("etcdstore: %s: %w: %w", what, broker.ErrStoreUnavailable, err)
}
