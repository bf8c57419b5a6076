package templates

import (
	"fmt"
	"math/bits"
	"strings"
	"time"

	// Embedded so freeze windows keep their IANA zones on minimal hosts and
	// distroless images that ship no /usr/share/zoneinfo.
	_ "time/tzdata"

	"github.com/robfig/cron/v3"

	"github.com/latchbroker/latch/templates/strictyaml"
)

// Window is a named freeze window: recurring (a cron start, a duration and
// an IANA time zone) or absolute (from, until).
//
// Recurring windows live in local wall-clock time: "0 0 28 * *" for 120h in
// Europe/Berlin runs from 00:00 on the 28th to 00:00 on the 3rd of the next
// month by the clocks on the wall in Berlin, whatever DST does in between
// (the absolute length is then 119h or 121h). That is what an operator who
// writes a window in their own zone means. A consequence on the night clocks
// go back: the repeated hour is inside the window if its wall time is, so a
// window can end at the transition and resume within the repeated hour.
//
// Active and NextChange compute from the cron fields directly (latest start
// at or before t, earliest start at or after t) in a handful of steps; they
// never scan minute by minute, so Evaluate stays fast.
type Window struct {
	Name string
	// Recurring windows.
	Cron     string
	Duration time.Duration
	Location *time.Location
	// Absolute windows.
	From, Until time.Time

	spec *cronSpec
	desc string
}

// Limits that keep a window meaningful and the search bounded.
const (
	// maxWindowDuration: a window that lasts more than a year is a
	// permanent freeze, which is what `latch freeze start` is for.
	maxWindowDuration = 366 * 24 * time.Hour
	// cronSearchYears bounds the search for a cron start in either
	// direction; a cron that never fires within it (Feb 30) is rejected.
	cronSearchYears = 5
	// maxChain bounds how many overlapping occurrences NextChange follows.
	maxChain = 1000
)

// NewWindow validates cfg and builds the window called name. Errors name the
// offending key in the config (freeze_windows.<name>.<key>).
func NewWindow(name string, cfg WindowConfig) (*Window, error) {
	var errs strictyaml.Errors
	path := "freeze_windows." + name
	w := &Window{Name: name}
	recurring := cfg.Cron != "" || cfg.Duration != 0 || cfg.Timezone != ""
	absolute := cfg.From != "" || cfg.Until != ""
	switch {
	case recurring && absolute:
		errs = append(errs, cfg.At.Errorf("%s: set cron, duration and timezone, or from and until, not both", path))
	case absolute:
		w.From = parseInstant(&errs, cfg.From, cfg.FromAt, cfg.At, path, "from")
		w.Until = parseInstant(&errs, cfg.Until, cfg.UntilAt, cfg.At, path, "until")
		if !w.From.IsZero() && !w.Until.IsZero() && !w.Until.After(w.From) {
			errs = append(errs, cfg.UntilAt.Errorf("%s.until: must be after from", path))
		}
	case recurring:
		if cfg.Cron == "" {
			errs = append(errs, cfg.At.Errorf("%s: cron is required with duration and timezone", path))
		} else if spec, err := parseCron(cfg.Cron); err != nil {
			errs = append(errs, cfg.CronAt.Errorf("%s.cron: %v", path, err))
		} else {
			w.Cron, w.spec = cfg.Cron, spec
		}
		switch {
		case cfg.Duration == 0:
			errs = append(errs, cfg.At.Errorf("%s: duration is required with cron (how long each occurrence lasts, such as 9h)", path))
		case cfg.Duration < time.Minute:
			errs = append(errs, cfg.DurationAt.Errorf("%s.duration: must be at least 1m", path))
		case cfg.Duration > maxWindowDuration:
			errs = append(errs, cfg.DurationAt.Errorf("%s.duration: must be at most 8784h (a year); use latch freeze start for an open-ended freeze", path))
		default:
			w.Duration = cfg.Duration
		}
		switch {
		case cfg.Timezone == "":
			errs = append(errs, cfg.At.Errorf("%s: timezone is required with cron (an IANA name such as Europe/Berlin, or UTC)", path))
		case cfg.Timezone == "Local":
			errs = append(errs, cfg.TimezoneAt.Errorf("%s.timezone: Local depends on the host; name the zone, such as Europe/Berlin", path))
		default:
			loc, err := time.LoadLocation(cfg.Timezone)
			if err != nil {
				errs = append(errs, cfg.TimezoneAt.Errorf("%s.timezone: unknown time zone %q", path, cfg.Timezone))
			} else {
				w.Location = loc
			}
		}
	default:
		errs = append(errs, cfg.At.Errorf("%s: needs cron, duration and timezone, or from and until", path))
	}
	if err := errs.Err(); err != nil {
		return nil, err
	}
	w.desc = w.describe()
	if w.spec != nil {
		if _, ok := w.spec.next(wall(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC), w.Location)); !ok {
			return nil, strictyaml.Errors{cfg.CronAt.Errorf("%s.cron: %q never fires", path, cfg.Cron)}
		}
	}
	return w, nil
}

func parseInstant(errs *strictyaml.Errors, s string, at, block strictyaml.Pos, path, key string) time.Time {
	if s == "" {
		*errs = append(*errs, block.Errorf("%s: %s is required with %s", path, key, map[string]string{"from": "until", "until": "from"}[key]))
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		*errs = append(*errs, at.Errorf("%s.%s: expected an RFC 3339 time with offset, such as 2026-12-24T00:00:00+01:00, got %q", path, key, s))
	}
	return t
}

// String describes the window for traces and explain output.
func (w *Window) String() string {
	if w.desc != "" {
		return w.desc
	}
	return w.describe()
}

func (w *Window) describe() string {
	if w.spec == nil {
		return fmt.Sprintf("%s to %s", w.From.Format(time.RFC3339), w.Until.Format(time.RFC3339))
	}
	return fmt.Sprintf("cron %q for %s in %s", w.Cron, fmtDuration(w.Duration), w.Location)
}

// Active reports whether t is inside the window.
func (w *Window) Active(t time.Time) bool {
	if w.spec == nil {
		return !t.Before(w.From) && t.Before(w.Until)
	}
	wt := wall(t, w.Location)
	s, ok := w.spec.prev(wt)
	return ok && wt.Sub(s) < w.Duration
}

// NextChange returns the first instant at or after t at which Active
// changes: when t is inside the window, the instant it ends (following
// occurrences that overlap or abut it); otherwise the instant it next
// starts. ok is false when there is no such instant within the search
// horizon (an absolute window in the past, a cron that covers all time).
//
// The result is in the window's time zone, for display.
func (w *Window) NextChange(t time.Time) (next time.Time, ok bool) {
	if w.spec == nil {
		switch {
		case t.Before(w.From):
			return w.From, true
		case t.Before(w.Until):
			return w.Until, true
		}
		return time.Time{}, false
	}
	wt := wall(t, w.Location)
	if s, ok := w.spec.prev(wt); ok && wt.Sub(s) < w.Duration {
		end := s.Add(w.Duration)
		for range maxChain {
			s2, ok := w.spec.prev(end)
			if !ok || !s2.Add(w.Duration).After(end) {
				return w.firstChange(t, resolve(end, w.Location, t), true), true
			}
			end = s2.Add(w.Duration)
			if end.Sub(wt) > maxWindowDuration {
				break
			}
		}
		return time.Time{}, false
	}
	// Not active, so wt itself is not a start; the next start is at the
	// next whole minute or later.
	n, ok := w.spec.next(wt.Truncate(time.Minute).Add(time.Minute))
	if !ok {
		return time.Time{}, false
	}
	return w.firstChange(t, resolve(n, w.Location, t), false), true
}

// firstChange returns u, the change found in wall-clock time, unless the
// wall clock jumps (a zone transition between t and u) onto the other side
// of the window first: when clocks go back an hour, a window can end, or
// start, at the transition itself.
func (w *Window) firstChange(t, u time.Time, active bool) time.Time {
	c := t
	for range 8 {
		_, end := c.In(w.Location).ZoneBounds()
		if end.IsZero() || !end.Before(u) || !end.After(c) {
			return u
		}
		if w.Active(end) != active {
			return end.In(w.Location)
		}
		c = end
	}
	return u
}

// wall returns t's wall-clock time in loc as a zone-less time (in UTC), so
// that arithmetic on it is calendar arithmetic with no DST jumps.
func wall(t time.Time, loc *time.Location) time.Time {
	_, off := t.In(loc).Zone()
	return t.UTC().Add(time.Duration(off) * time.Second)
}

// resolve maps a wall-clock time in loc to the first instant, not before
// from, whose wall clock reads it. When clocks go back the earlier of the
// two instants wins; a wall time in a spring-forward gap resolves to the end
// of the gap (the first instant whose wall clock is later).
func resolve(e time.Time, loc *time.Location, from time.Time) time.Time {
	// Offsets around e: time zone transitions are far more than a day apart,
	// so the offsets in effect a day either side cover both sides of one.
	var offs [3]int
	for i, d := range [3]time.Duration{-24 * time.Hour, 0, 24 * time.Hour} {
		_, offs[i] = e.Add(d).In(loc).Zone()
	}
	var best, gapEnd time.Time
	for _, off := range offs {
		u := e.Add(-time.Duration(off) * time.Second)
		if u.Before(from) {
			continue
		}
		switch w := wall(u, loc); {
		case w.Equal(e):
			if best.IsZero() || u.Before(best) {
				best = u
			}
		case w.After(e):
			start, _ := u.In(loc).ZoneBounds()
			if !start.IsZero() && wall(start, loc).After(e) && (gapEnd.IsZero() || start.Before(gapEnd)) {
				gapEnd = start
			}
		}
	}
	if best.IsZero() {
		best = gapEnd
	}
	if best.IsZero() { // no transition data; treat the zone as fixed
		best = e.Add(-time.Duration(offs[1]) * time.Second)
	}
	if best.Before(from) {
		best = from
	}
	return best.In(loc)
}

// cronSpec holds a standard 5-field cron's fields as bit sets, as parsed by
// robfig/cron (bit n set = value n matches; starBit marks "*").
type cronSpec struct {
	minute, hour, dom, month, dow uint64
	// domOrDowStar: cron's rule is that when either day field is "*" both
	// must match, otherwise either may.
	domOrDowStar bool
}

const starBit = 1 << 63

func parseCron(s string) (*cronSpec, error) {
	t := strings.TrimSpace(s)
	if strings.HasPrefix(t, "TZ=") || strings.HasPrefix(t, "CRON_TZ=") {
		return nil, fmt.Errorf("set the time zone with timezone, not in the cron expression")
	}
	if strings.HasPrefix(t, "@") {
		return nil, fmt.Errorf("%q: descriptors are not supported; write 5 fields: minute hour day-of-month month day-of-week", s)
	}
	sched, err := cron.ParseStandard(t)
	if err != nil {
		return nil, fmt.Errorf("invalid cron %q: %v (fields: minute hour day-of-month month day-of-week)", s, err)
	}
	ss, ok := sched.(*cron.SpecSchedule)
	if !ok {
		return nil, fmt.Errorf("invalid cron %q: expected 5 fields: minute hour day-of-month month day-of-week", s)
	}
	return &cronSpec{
		minute:       ss.Minute &^ starBit,
		hour:         ss.Hour &^ starBit,
		dom:          ss.Dom &^ starBit,
		month:        ss.Month &^ starBit,
		dow:          ss.Dow &^ starBit,
		domOrDowStar: ss.Dom&starBit != 0 || ss.Dow&starBit != 0,
	}, nil
}

func (c *cronSpec) dayMatches(y int, m time.Month, d int) bool {
	domMatch := c.dom&(1<<uint(d)) != 0
	dowMatch := c.dow&(1<<uint(weekday(y, m, d))) != 0
	if c.domOrDowStar {
		return domMatch && dowMatch
	}
	return domMatch || dowMatch
}

// upTo is the bit set {0..n}.
func upTo(n int) uint64 { return (uint64(2) << uint(n)) - 1 }

// prev returns the latest start at or before the wall time w (starts are
// whole minutes), searching back cronSearchYears.
func (c *cronSpec) prev(w time.Time) (time.Time, bool) {
	y, mo, d := w.Date()
	h, mi, _ := w.Clock()
	floor := y - cronSearchYears
	prevDay := func() {
		d--
		if d == 0 {
			mo--
			if mo == 0 {
				mo, y = 12, y-1
			}
			d = daysIn(mo, y)
		}
		h, mi = 23, 59
	}
	for y >= floor {
		if c.month&(1<<uint(mo)) == 0 {
			mo--
			if mo == 0 {
				mo, y = 12, y-1
			}
			d, h, mi = daysIn(mo, y), 23, 59
			continue
		}
		if !c.dayMatches(y, mo, d) {
			prevDay()
			continue
		}
		hb := c.hour & upTo(h)
		if hb == 0 {
			prevDay()
			continue
		}
		if top := bits.Len64(hb) - 1; top != h {
			h, mi = top, 59
		}
		mb := c.minute & upTo(mi)
		if mb == 0 {
			if h == 0 {
				prevDay()
			} else {
				h, mi = h-1, 59
			}
			continue
		}
		mi = bits.Len64(mb) - 1
		return time.Date(y, mo, d, h, mi, 0, 0, time.UTC), true
	}
	return time.Time{}, false
}

// next returns the earliest start at or after the wall time w, which must be
// a whole minute, searching forward cronSearchYears.
func (c *cronSpec) next(w time.Time) (time.Time, bool) {
	y, mo, d := w.Date()
	h, mi, _ := w.Clock()
	ceil := y + cronSearchYears
	nextDay := func() {
		d++
		if d > daysIn(mo, y) {
			d = 1
			mo++
			if mo == 13 {
				mo, y = 1, y+1
			}
		}
		h, mi = 0, 0
	}
	for y <= ceil {
		if c.month&(1<<uint(mo)) == 0 {
			mo++
			if mo == 13 {
				mo, y = 1, y+1
			}
			d, h, mi = 1, 0, 0
			continue
		}
		if !c.dayMatches(y, mo, d) {
			nextDay()
			continue
		}
		hb := c.hour &^ (upTo(h) >> 1)
		if hb == 0 {
			nextDay()
			continue
		}
		if low := bits.TrailingZeros64(hb); low != h {
			h, mi = low, 0
		}
		mb := c.minute &^ (upTo(mi) >> 1)
		if mb == 0 {
			if h == 23 {
				nextDay()
			} else {
				h, mi = h+1, 0
			}
			continue
		}
		mi = bits.TrailingZeros64(mb)
		return time.Date(y, mo, d, h, mi, 0, 0, time.UTC), true
	}
	return time.Time{}, false
}

func daysIn(m time.Month, y int) int {
	switch m {
	case time.February:
		if y%4 == 0 && (y%100 != 0 || y%400 == 0) {
			return 29
		}
		return 28
	case time.April, time.June, time.September, time.November:
		return 30
	}
	return 31
}

// weekday is 0 for Sunday (Sakamoto's method; cheaper than time.Date).
func weekday(y int, m time.Month, d int) int {
	t := [...]int{0, 3, 2, 5, 0, 3, 5, 1, 4, 6, 2, 4}
	if m < 3 {
		y--
	}
	return ((y+y/4-y/100+y/400+t[m-1]+d)%7 + 7) % 7
}

// fmtDuration prints 120h rather than 120h0m0s.
func fmtDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
