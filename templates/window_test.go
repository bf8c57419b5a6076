package templates

import (
	"math/rand"
	"strings"
	"testing"
	"time"

	"github.com/robfig/cron/v3"
)

func mustWindow(t *testing.T, cronSpec string, d time.Duration, tz string) *Window {
	t.Helper()
	w, err := NewWindow("w", WindowConfig{Cron: cronSpec, Duration: d, Timezone: tz})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func ts(t *testing.T, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// windowCase checks Active at an instant and, when next is set, NextChange.
type windowCase struct {
	at     string
	active bool
	next   string // RFC 3339 in the window's zone; "" = not checked
}

func checkWindow(t *testing.T, w *Window, cases []windowCase) {
	t.Helper()
	for _, c := range cases {
		at := ts(t, c.at)
		if got := w.Active(at); got != c.active {
			t.Errorf("%s Active(%s) = %v, want %v", w, c.at, got, c.active)
		}
		if c.next == "" {
			continue
		}
		n, ok := w.NextChange(at)
		if !ok || n.Format(time.RFC3339) != c.next {
			t.Errorf("%s NextChange(%s) = %s %v, want %s", w, c.at, n.Format(time.RFC3339), ok, c.next)
		}
	}
}

func TestWindow_BillingClose(t *testing.T) {
	w := mustWindow(t, "0 0 28 * *", 120*time.Hour, "Europe/Berlin")
	checkWindow(t, w, []windowCase{
		// The acceptance case: inside, across the year end.
		{"2026-12-29T10:00:00+01:00", true, "2027-01-02T00:00:00+01:00"},
		{"2026-12-27T23:59:59+01:00", false, "2026-12-28T00:00:00+01:00"},
		{"2026-12-28T00:00:00+01:00", true, "2027-01-02T00:00:00+01:00"},
		{"2027-01-01T23:59:59+01:00", true, "2027-01-02T00:00:00+01:00"},
		{"2027-01-02T00:00:00+01:00", false, "2027-01-28T00:00:00+01:00"},
		{"2026-12-15T10:00:00+01:00", false, "2026-12-28T00:00:00+01:00"},
		// February: 28th + 5 days is March 5 in a common year, March 4 in a
		// leap year.
		{"2027-03-04T12:00:00+01:00", true, "2027-03-05T00:00:00+01:00"},
		{"2028-03-03T23:59:00+01:00", true, "2028-03-04T00:00:00+01:00"},
		{"2028-03-04T00:00:00+01:00", false, "2028-03-28T00:00:00+02:00"},
		// 30-day months: April 28 + 5 days = May 3.
		{"2026-05-02T23:59:00+02:00", true, "2026-05-03T00:00:00+02:00"},
	})
}

// DST in Europe/Berlin: clocks go forward at 02:00 on the last Sunday of
// March and back at 03:00 on the last Sunday of October.
func TestWindow_DST_Berlin(t *testing.T) {
	t.Run("business hours the week clocks go forward", func(t *testing.T) {
		w := mustWindow(t, "0 9 * * 1-5", 9*time.Hour, "Europe/Berlin")
		checkWindow(t, w, []windowCase{
			{"2026-03-27T08:00:00Z", true, "2026-03-27T18:00:00+01:00"}, // Fri 09:00 CET
			{"2026-03-27T07:59:00Z", false, "2026-03-27T09:00:00+01:00"},
			{"2026-03-28T12:00:00+01:00", false, "2026-03-30T09:00:00+02:00"}, // Sat → Mon, across the change
			{"2026-03-29T12:00:00+02:00", false, "2026-03-30T09:00:00+02:00"},
			{"2026-03-30T06:59:00Z", false, "2026-03-30T09:00:00+02:00"},
			{"2026-03-30T07:00:00Z", true, "2026-03-30T18:00:00+02:00"}, // Mon 09:00 CEST
			{"2026-03-30T15:59:59Z", true, ""},
			{"2026-03-30T16:00:00Z", false, ""},
		})
	})
	t.Run("business hours the week clocks go back", func(t *testing.T) {
		w := mustWindow(t, "0 9 * * 1-5", 9*time.Hour, "Europe/Berlin")
		checkWindow(t, w, []windowCase{
			{"2026-10-23T07:00:00Z", true, "2026-10-23T18:00:00+02:00"},
			{"2026-10-24T10:00:00+02:00", false, "2026-10-26T09:00:00+01:00"},
			{"2026-10-26T07:59:00Z", false, ""},
			{"2026-10-26T08:00:00Z", true, "2026-10-26T18:00:00+01:00"}, // Mon 09:00 CET
			{"2026-10-26T16:59:00Z", true, ""},
		})
	})
	t.Run("billing close across the March change", func(t *testing.T) {
		// 2027: March 28 is the last Sunday. The window runs 00:00 CET on
		// the 28th to 00:00 CEST on April 2 by the wall clock (119h).
		w := mustWindow(t, "0 0 28 * *", 120*time.Hour, "Europe/Berlin")
		checkWindow(t, w, []windowCase{
			{"2027-03-27T23:00:00Z", true, "2027-04-02T00:00:00+02:00"},
			{"2027-03-27T22:59:59Z", false, "2027-03-28T00:00:00+01:00"},
			{"2027-04-01T21:59:59Z", true, "2027-04-02T00:00:00+02:00"},
			{"2027-04-01T22:00:00Z", false, "2027-04-28T00:00:00+02:00"},
		})
	})
	t.Run("billing close across the October change", func(t *testing.T) {
		// 2029: October 28 is the last Sunday; 00:00 CEST to 00:00 CET on
		// November 2 (121h).
		w := mustWindow(t, "0 0 28 * *", 120*time.Hour, "Europe/Berlin")
		checkWindow(t, w, []windowCase{
			{"2029-10-27T22:00:00Z", true, "2029-11-02T00:00:00+01:00"},
			{"2029-11-01T22:59:59Z", true, ""},
			{"2029-11-01T23:00:00Z", false, "2029-11-28T00:00:00+01:00"},
		})
	})
	t.Run("window starting in the skipped hour", func(t *testing.T) {
		// 02:30 does not exist on 2026-03-29; the window [02:30, 03:30)
		// covers 03:00-03:30 CEST, from the end of the gap.
		w := mustWindow(t, "30 2 * * *", time.Hour, "Europe/Berlin")
		checkWindow(t, w, []windowCase{
			{"2026-03-29T00:59:59Z", false, "2026-03-29T03:00:00+02:00"},
			{"2026-03-29T01:00:00Z", true, "2026-03-29T03:30:00+02:00"},
			{"2026-03-29T01:29:59Z", true, ""},
			{"2026-03-29T01:30:00Z", false, "2026-03-30T02:30:00+02:00"},
		})
	})
	t.Run("window ending in the skipped hour", func(t *testing.T) {
		// [01:30, 02:30) wall: ends at the gap, 03:00 CEST.
		w := mustWindow(t, "30 1 * * *", time.Hour, "Europe/Berlin")
		checkWindow(t, w, []windowCase{
			{"2026-03-29T00:30:00Z", true, "2026-03-29T03:00:00+02:00"},
			{"2026-03-29T00:59:59Z", true, ""},
			{"2026-03-29T01:00:00Z", false, ""},
		})
	})
	t.Run("window in the repeated hour", func(t *testing.T) {
		// [02:30, 03:30) wall on 2026-10-25: 02:30-03:00 CEST, then the
		// clock reads 02:00 CET (outside), then 02:30-03:30 CET again.
		w := mustWindow(t, "30 2 * * *", time.Hour, "Europe/Berlin")
		checkWindow(t, w, []windowCase{
			{"2026-10-25T00:29:59Z", false, "2026-10-25T02:30:00+02:00"},
			{"2026-10-25T00:45:00Z", true, "2026-10-25T02:00:00+01:00"},
			{"2026-10-25T01:15:00Z", false, "2026-10-25T02:30:00+01:00"},
			{"2026-10-25T01:45:00Z", true, "2026-10-25T03:30:00+01:00"},
			{"2026-10-25T02:30:00Z", false, ""},
		})
	})
}

// DST in America/New_York: forward at 02:00 on the second Sunday of March,
// back at 02:00 on the first Sunday of November.
func TestWindow_DST_NewYork(t *testing.T) {
	night := mustWindow(t, "0 22 * * *", 10*time.Hour, "America/New_York")
	checkWindow(t, night, []windowCase{
		// 2026-03-07 22:00 EST to 03-08 08:00 EDT: 9h.
		{"2026-03-08T03:00:00Z", true, "2026-03-08T08:00:00-04:00"},
		{"2026-03-08T02:59:59Z", false, "2026-03-07T22:00:00-05:00"},
		{"2026-03-08T11:59:59Z", true, ""},
		{"2026-03-08T12:00:00Z", false, "2026-03-08T22:00:00-04:00"},
		// 2026-10-31 22:00 EDT to 11-01 08:00 EST: 11h.
		{"2026-11-01T02:00:00Z", true, "2026-11-01T08:00:00-05:00"},
		{"2026-11-01T12:59:59Z", true, ""},
		{"2026-11-01T13:00:00Z", false, "2026-11-01T22:00:00-05:00"},
	})
	hours := mustWindow(t, "0 9 * * 1-5", 8*time.Hour, "America/New_York")
	checkWindow(t, hours, []windowCase{
		{"2026-03-06T14:00:00Z", true, "2026-03-06T17:00:00-05:00"},  // Fri 09:00 EST
		{"2026-03-07T12:00:00Z", false, "2026-03-09T09:00:00-04:00"}, // Sat → Mon EDT
		{"2026-03-09T12:59:00Z", false, ""},
		{"2026-03-09T13:00:00Z", true, "2026-03-09T17:00:00-04:00"},
		{"2026-11-02T13:59:00Z", false, ""},
		{"2026-11-02T14:00:00Z", true, "2026-11-02T17:00:00-05:00"},
	})
}

func TestWindow_MonthEnds(t *testing.T) {
	t.Run("31st fires only in 31-day months", func(t *testing.T) {
		w := mustWindow(t, "0 0 31 * *", time.Hour, "UTC")
		checkWindow(t, w, []windowCase{
			{"2026-04-15T00:00:00Z", false, "2026-05-31T00:00:00Z"},
			{"2026-06-01T00:00:00Z", false, "2026-07-31T00:00:00Z"},
			{"2026-12-31T00:30:00Z", true, "2026-12-31T01:00:00Z"},
			{"2027-01-01T00:00:00Z", false, "2027-01-31T00:00:00Z"},
			{"2027-02-01T00:00:00Z", false, "2027-03-31T00:00:00Z"},
		})
	})
	t.Run("leap day", func(t *testing.T) {
		w := mustWindow(t, "0 12 29 2 *", 24*time.Hour, "Europe/Berlin")
		checkWindow(t, w, []windowCase{
			{"2026-01-01T00:00:00+01:00", false, "2028-02-29T12:00:00+01:00"},
			{"2028-03-01T11:59:00+01:00", true, "2028-03-01T12:00:00+01:00"},
		})
	})
	t.Run("last days with day-of-month or day-of-week", func(t *testing.T) {
		// Day fields both restricted: either matches (cron's rule).
		w := mustWindow(t, "0 0 30 * 0", time.Hour, "UTC")
		checkWindow(t, w, []windowCase{
			{"2026-02-27T00:00:00Z", false, "2026-03-01T00:00:00Z"}, // a Sunday, before the 30th
			{"2026-03-02T00:00:00Z", false, "2026-03-08T00:00:00Z"},
			{"2026-03-28T00:00:00Z", false, "2026-03-29T00:00:00Z"},
			{"2026-03-29T01:00:00Z", false, "2026-03-30T00:00:00Z"},
		})
	})
	t.Run("rolls over the year", func(t *testing.T) {
		w := mustWindow(t, "0 23 31 12 *", 2*time.Hour, "Europe/Berlin")
		checkWindow(t, w, []windowCase{
			{"2027-01-01T00:30:00+01:00", true, "2027-01-01T01:00:00+01:00"},
			{"2027-01-01T01:00:00+01:00", false, "2027-12-31T23:00:00+01:00"},
		})
	})
}

func TestWindow_OverlappingOccurrences(t *testing.T) {
	// Weekdays 09:00 for 30h: each occurrence overlaps the next, so a
	// Monday block lasts until Saturday 15:00.
	w := mustWindow(t, "0 9 * * 1-5", 30*time.Hour, "UTC")
	checkWindow(t, w, []windowCase{
		{"2026-06-01T10:00:00Z", true, "2026-06-06T15:00:00Z"},
		{"2026-06-06T15:00:00Z", false, "2026-06-08T09:00:00Z"},
	})
	// A window that never ends has no next change.
	always := mustWindow(t, "0 */6 * * *", 8*time.Hour, "UTC")
	if !always.Active(ts(t, "2026-06-01T10:00:00Z")) {
		t.Fatal("not active")
	}
	if n, ok := always.NextChange(ts(t, "2026-06-01T10:00:00Z")); ok {
		t.Fatalf("NextChange = %s, want none", n)
	}
}

func TestWindow_Absolute(t *testing.T) {
	w, err := NewWindow("year-end", WindowConfig{From: "2026-12-24T00:00:00+01:00", Until: "2027-01-01T00:00:00+01:00"})
	if err != nil {
		t.Fatal(err)
	}
	checkWindow(t, w, []windowCase{
		{"2026-12-23T22:59:59Z", false, "2026-12-24T00:00:00+01:00"},
		{"2026-12-23T23:00:00Z", true, "2027-01-01T00:00:00+01:00"},
		{"2026-12-31T22:59:59Z", true, ""},
		{"2026-12-31T23:00:00Z", false, ""},
	})
	if _, ok := w.NextChange(ts(t, "2027-06-01T00:00:00Z")); ok {
		t.Fatal("a past absolute window has no next change")
	}
}

// TestCronSpec_MatchesRobfig checks prev and next against robfig/cron's own
// Next on zone-less times, for random instants.
func TestCronSpec_MatchesRobfig(t *testing.T) {
	specs := []string{"0 0 28 * *", "0 9 * * 1-5", "*/15 2-4 * * *", "30 23 31 * *", "0 0 1,15 * 0", "5 4 * 2 *", "0 0 29 2 *", "59 23 * * 6", "* * * * *"}
	rng := rand.New(rand.NewSource(1))
	for _, s := range specs {
		spec, err := parseCron(s)
		if err != nil {
			t.Fatal(err)
		}
		oracle, _ := cron.ParseStandard(s)
		for range 300 {
			w := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(rng.Int63n(int64(4 * 365 * 24 * time.Hour)))).Truncate(time.Minute)
			n, ok := spec.next(w)
			if want := oracle.Next(w.Add(-time.Second)); !ok || !n.Equal(want) {
				t.Fatalf("%s next(%s) = %s, want %s", s, w, n, want)
			}
			p, ok := spec.prev(w)
			if !ok {
				t.Fatalf("%s prev(%s) not found", s, w)
			}
			if p.After(w) || !oracle.Next(p.Add(-time.Second)).Equal(p) || !oracle.Next(p).After(w) {
				t.Fatalf("%s prev(%s) = %s is not the latest start", s, w, p)
			}
		}
	}
}

func TestNewWindow_Errors(t *testing.T) {
	tests := []struct {
		name string
		cfg  WindowConfig
		want string
	}{
		{"nothing", WindowConfig{}, "freeze_windows.w: needs cron, duration and timezone, or from and until"},
		{"both kinds", WindowConfig{Cron: "0 0 * * *", Duration: time.Hour, Timezone: "UTC", From: "2026-01-01T00:00:00Z"}, "not both"},
		{"descriptor", WindowConfig{Cron: "@daily", Duration: time.Hour, Timezone: "UTC"}, "descriptors are not supported"},
		{"every", WindowConfig{Cron: "@every 1h", Duration: time.Hour, Timezone: "UTC"}, "descriptors are not supported"},
		{"tz in cron", WindowConfig{Cron: "TZ=UTC 0 0 * * *", Duration: time.Hour, Timezone: "UTC"}, "set the time zone with timezone"},
		{"six fields", WindowConfig{Cron: "0 0 0 * * *", Duration: time.Hour, Timezone: "UTC"}, "expected exactly 5 fields"},
		{"short", WindowConfig{Cron: "0 0 * * *", Duration: time.Second, Timezone: "UTC"}, "must be at least 1m"},
		{"too long", WindowConfig{Cron: "0 0 * * *", Duration: 9000 * time.Hour, Timezone: "UTC"}, "must be at most 8784h"},
		{"no timezone", WindowConfig{Cron: "0 0 * * *", Duration: time.Hour}, "timezone is required"},
		{"local", WindowConfig{Cron: "0 0 * * *", Duration: time.Hour, Timezone: "Local"}, "Local depends on the host"},
		{"until before from", WindowConfig{From: "2026-01-02T00:00:00Z", Until: "2026-01-01T00:00:00Z"}, "until: must be after from"},
		{"no until", WindowConfig{From: "2026-01-02T00:00:00Z"}, "until is required with from"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewWindow("w", tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

// BenchmarkWindowActive shows the cost of the "is it active" check that
// every evaluation pays per window.
func BenchmarkWindowActive(b *testing.B) {
	w, _ := NewWindow("b", WindowConfig{Cron: "0 0 28 * *", Duration: 120 * time.Hour, Timezone: "Europe/Berlin"})
	at := time.Date(2026, 12, 15, 10, 0, 0, 0, time.UTC)
	for b.Loop() {
		w.Active(at)
	}
}
