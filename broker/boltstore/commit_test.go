package boltstore

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"

	bolt "go.etcd.io/bbolt"

	"github.com/latchbroker/latch/broker"
)

// busy submits a write that holds the writer until release is closed, and
// returns once it is running: what is submitted meanwhile queues up.
func busy(t *testing.T, c *committer) (release chan struct{}, done <-chan error) {
	t.Helper()
	release = make(chan struct{})
	running := make(chan struct{})
	var once sync.Once
	done = c.submit(func(*bolt.Tx) error {
		once.Do(func() { close(running) })
		<-release
		return nil
	})
	<-running
	return release, done
}

// TestCommitter_Groups checks the point of the committer: writes that
// arrive while a transaction is on the disk share the next one.
func TestCommitter_Groups(t *testing.T) {
	s := openTest(t, Options{})
	release, first := busy(t, s.c)

	const n = 50
	txs := make([]int, n)
	var results []<-chan error
	for i := 0; i < n; i++ {
		results = append(results, s.c.submit(func(tx *bolt.Tx) error {
			txs[i] = tx.ID()
			return tx.Bucket(bktAgents).Put([]byte(fmt.Sprint(i)), []byte("{}"))
		}))
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	for i, r := range results {
		if err := <-r; err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	for i, id := range txs {
		if id != txs[0] {
			t.Fatalf("write %d committed in transaction %d, write 0 in %d: want one shared transaction", i, id, txs[0])
		}
	}
}

// TestCommitter_FailureIsolated puts a failing and a panicking write in a
// batch with good ones: the good ones commit, the bad ones get their own
// errors, and nothing of the bad ones is written.
func TestCommitter_FailureIsolated(t *testing.T) {
	s := openTest(t, Options{})
	release, first := busy(t, s.c)

	put := func(key string, fail error, panics bool) <-chan error {
		return s.c.submit(func(tx *bolt.Tx) error {
			if err := tx.Bucket(bktAgents).Put([]byte(key), []byte("{}")); err != nil {
				return err
			}
			if panics {
				panic("bad write")
			}
			return fail
		})
	}
	boom := errors.New("boom")
	good1 := put("good1", nil, false)
	bad := put("bad", boom, false)
	good2 := put("good2", nil, false)
	panicky := put("panicky", nil, true)
	good3 := put("good3", nil, false)
	close(release)
	<-first

	for name, r := range map[string]<-chan error{"good1": good1, "good2": good2, "good3": good3} {
		if err := <-r; err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := <-bad; !errors.Is(err, boom) {
		t.Errorf("bad: err = %v, want boom", err)
	}
	if err := <-panicky; err == nil || err.Error() != "panic in write: bad write" {
		t.Errorf("panicky: err = %v", err)
	}
	s.db.View(func(tx *bolt.Tx) error {
		for _, k := range []string{"good1", "good2", "good3"} {
			if tx.Bucket(bktAgents).Get([]byte(k)) == nil {
				t.Errorf("%s not written", k)
			}
		}
		for _, k := range []string{"bad", "panicky"} {
			if tx.Bucket(bktAgents).Get([]byte(k)) != nil {
				t.Errorf("%s written", k)
			}
		}
		return nil
	})
}

// TestCommitter_CloseDrains checks that Close waits for the write on the
// disk, commits what is queued, and refuses what comes after. It runs in a
// synctest bubble so that synctest.Wait, not a sleep, says when Close has
// begun: once every other goroutine is blocked, the writer is held by busy
// and Close has stopped taking writes and waits for the queue to drain.
func TestCommitter_CloseDrains(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := openTest(t, Options{})
		release, first := busy(t, s.c)
		queued := s.c.submit(func(tx *bolt.Tx) error { return tx.Bucket(bktAgents).Put([]byte("q"), []byte("{}")) })

		closed := make(chan error, 1)
		go func() { closed <- s.Close() }()
		synctest.Wait()
		select {
		case err := <-closed:
			t.Fatalf("Close returned (%v) while a write was on the disk", err)
		default:
		}
		if err := <-s.c.submit(func(*bolt.Tx) error { return nil }); !errors.Is(err, errClosed) {
			t.Errorf("write after Close began: err = %v", err)
		}
		close(release)
		if err := <-first; err != nil {
			t.Fatal(err)
		}
		if err := <-queued; err != nil {
			t.Errorf("write queued before Close: %v", err)
		}
		if err := <-closed; err != nil {
			t.Fatal(err)
		}
		if err := <-s.c.submit(func(*bolt.Tx) error { return nil }); !errors.Is(err, errClosed) {
			t.Errorf("write after Close: err = %v", err)
		}
	})
	if err := classify("apply", errClosed); !errors.Is(err, broker.ErrStoreUnavailable) {
		t.Errorf("errClosed is not ErrStoreUnavailable: %v", err)
	}
}
