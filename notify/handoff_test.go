package notify

import (
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/latchbroker/latch/broker"
)

// doneThrough is the event before the oldest delivery still queued (the
// cursor when none is); takeOver moves the cursor to where another
// replica left off and drops what is queued of events up to it.
func TestHandoff_DoneThroughAndTakeOver(t *testing.T) {
	n, err := New(Config{OutboxPath: filepath.Join(t.TempDir(), "outbox.db"), Webhooks: []Webhook{{URL: "https://hooks.example/a", Events: []string{"deny"}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	var events []broker.Event
	for _, seq := range []uint64{3, 4, 7} {
		events = append(events, broker.Event{Seq: seq, Type: broker.EventDeny})
	}
	if err := n.enqueue(events, 8); err != nil {
		t.Fatal(err)
	}
	done := func(want uint64) {
		t.Helper()
		if got, err := n.doneThrough(); err != nil || got != want {
			t.Fatalf("doneThrough = %d, %v; want %d", got, err, want)
		}
	}
	done(2)
	items, err := n.outbox(func(item) bool { return true })
	if err != nil || len(items) != 3 {
		t.Fatalf("outbox = %d items, %v", len(items), err)
	}
	n.finish(items[0], true) // event 3 sent
	done(3)
	if err := n.db.Update(func(tx *bolt.Tx) error { return takeOver(tx, 5) }); err != nil {
		t.Fatal(err)
	}
	if items, _ = n.outbox(func(item) bool { return true }); len(items) != 1 || items[0].Delivery != deliveryID(7, "https://hooks.example/a") {
		t.Fatalf("after the takeover at 5 the outbox holds %+v, want event 7's delivery alone", items)
	}
	done(5)
	n.finish(items[0], false) // event 7 dead-lettered: done too
	done(5)                   // the cursor
}
