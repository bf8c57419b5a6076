package boltstore

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/latchbroker/latch/broker"
)

// bktGroupsRetired holds the retired groups (Refs.Group → when, as
// big-endian Unix nanoseconds, then the backend's name). It is made by the first mark, so that
// files of older latches open read-only without it.
var bktGroupsRetired = []byte("groups_retired")

func prepareGroups(w *write, c broker.Change) error {
	w.retireGroups, w.forgetGroups = c.RetireGroups, c.ForgetGroups
	return nil
}

func (w *write) writeGroupMarks(tx *bolt.Tx) error {
	put := make([]kv, len(w.retireGroups))
	for i, g := range w.retireGroups {
		v := binary.BigEndian.AppendUint64(nil, uint64(w.now.UnixNano()))
		put[i] = kv{[]byte(g.Group), append(v, g.Backend...)}
	}
	return writeMarks(tx, bktGroupsRetired, w.forgetGroups, put)
}

// RetiredGroups implements broker.Store.
func (s *Store) RetiredGroups(ctx context.Context) ([]broker.RetiredGroup, error) {
	var out []broker.RetiredGroup
	err := s.view(ctx, "retired groups", func(tx *bolt.Tx) error {
		b := tx.Bucket(bktGroupsRetired)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			if len(v) <= 8 {
				return fmt.Errorf("%w: retired group %q: bad mark", ErrCorrupt, k)
			}
			out = append(out, broker.RetiredGroup{Group: string(k), Backend: string(v[8:]),
				At: time.Unix(0, int64(binary.BigEndian.Uint64(v[:8]))).UTC()})
			return nil
		})
	})
	return out, err
}
