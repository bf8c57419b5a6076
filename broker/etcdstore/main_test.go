package etcdstore

import (
	"fmt"
	"os"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/latchbroker/latch/integration/stack"
)

// st is a real three-member etcd cluster (make tools builds it).
var st *stack.Stack

func TestMain(m *testing.M) {
	os.Exit(stack.Main(m, stack.WithEtcd, &st))
}

// newClient returns a client of the cluster, closed with the test.
func newClient(t testing.TB) *clientv3.Client {
	t.Helper()
	c, err := st.Etcd.Client()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// testPrefix is a prefix of t's own, new on each run (-count): tests
// share the cluster, not data.
func testPrefix(t testing.TB) string {
	return fmt.Sprintf("/latch-test/%s/%d", t.Name(), time.Now().UnixNano())
}

// newStore returns a store under prefix on a client of its own (a
// replica), closed with the test.
func newStore(t testing.TB, prefix string) *Store {
	t.Helper()
	s, err := New(newClient(t), prefix, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
