package etcdstore

import (
	"context"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Fence is a compare a change must pass to be written, such as
// concurrency.Election's leadership key at its revision: the duties a
// replica runs only while elected write under it, so that once the
// replica has lost the election (its session expired while it was paused
// or cut off), what it still has in flight writes nothing and fails with
// ErrFenced instead of racing the replica that took the duties over.
type Fence struct {
	Cmp clientv3.Cmp
}

type fenceKey struct{}

// WithFence returns ctx carrying f: every Apply under it is fenced by f.
// The other changes (the requests any replica serves) are not.
func WithFence(ctx context.Context, f *Fence) context.Context {
	return context.WithValue(ctx, fenceKey{}, f)
}

func fenceOf(ctx context.Context) *Fence {
	f, _ := ctx.Value(fenceKey{}).(*Fence)
	return f
}
