package broker

import (
	"strings"
	"testing"
	"time"
)

func chain(n int) []Event {
	evs := make([]Event, n)
	var prev *Event
	for i := range evs {
		evs[i] = Event{Time: time.Date(2026, 1, 1, 0, 0, i, 0, time.UTC), Type: EventIssue, Actor: "spiffe://example.org/a", Lease: "L" + string(rune('A'+i))}
		evs[i].Chain(prev)
		prev = &evs[i]
	}
	return evs
}

func TestChainVerifier(t *testing.T) {
	tests := []struct {
		name   string
		tamper func([]Event) []Event
		want   string // substring of the error; "" for a valid chain
	}{
		{"Intact", func(e []Event) []Event { return e }, ""},
		{"ErrEdited", func(e []Event) []Event { e[2].Actor = "spiffe://example.org/mallory"; return e }, "record 3: hash does not match"},
		{"ErrDeleted", func(e []Event) []Event { return append(e[:1], e[2:]...) }, "record 2: sequence number is 3"},
		{"ErrReordered", func(e []Event) []Event { e[1], e[2] = e[2], e[1]; return e }, "record 2: sequence number is 3"},
		{"ErrRelinked", func(e []Event) []Event {
			// Renumbered after a deletion, but the link gives it away.
			e = append(e[:1], e[2:]...)
			e[1].Seq = 2
			e[1].Hash = e[1].ComputeHash()
			return e
		}, "record 2: previous hash does not match"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var v ChainVerifier
			var err error
			for _, e := range tt.tamper(chain(5)) {
				if err = v.Next(e); err != nil {
					break
				}
			}
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("intact chain: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestEvent_HashIsStable(t *testing.T) {
	e := chain(1)[0]
	local := e
	local.Time = e.Time.In(time.FixedZone("X", 3600))
	if local.ComputeHash() != e.Hash {
		t.Fatal("the hash depends on the time zone the time is held in")
	}
}
