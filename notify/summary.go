package notify

import (
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/latchbroker/latch/broker"
)

// Almost every value an event carries can come from a caller: an
// unregistered agent chooses its task name, its reason, the approval ID
// it picks up, and the refusals of a malformed request record what was
// sent. So a summary writes latch's own words as they are and every value
// through its format's quoting function, never raw.

// Bounds on what one summary shows of a value, so that a long one can
// neither push the rest out of a message (Slack truncates long texts) nor
// make a notification unreadable. The Payload's structured fields keep
// the whole value.
const (
	maxValueRunes = 200
	maxReasons    = 10
)

// format is how a summary writes the values it inserts.
type format struct {
	// value quotes one value from the event so that, whatever it holds,
	// it reads as one value on one line and cannot act as markup.
	value func(string) string
}

var (
	// plainText is Payload.Text: values of letters, digits and -._:/@+
	// as they are, others quoted (Go syntax), so that a value cannot pass
	// for latch's own words, and with control, format and other
	// non-printing characters escaped (\n, \u202e), so that it cannot
	// break the line or reorder what a terminal shows.
	plainText = format{value: plainValue}
	// slackMrkdwn is a Slack webhook's text: every value in a code span,
	// where Slack makes no mention, link or formatting, with &, < and >
	// escaped as Slack documents (&amp; &lt; &gt;), so that not even
	// Slack's own <!channel> or <url|label> syntax is parsed in it.
	slackMrkdwn = format{value: slackValue}
)

// render builds a delivery's body; link is the console page of the
// approval the event is about, or "".
func render(e broker.Event, slack bool, link string) ([]byte, error) {
	if slack {
		text := SlackText(e)
		if link != "" {
			// Slack's link syntax; link is latch's own URL with a
			// path-escaped approval ID, and & < > escaped as Slack asks.
			text += " <" + slackEscaper.Replace(link) + "|Open in the latch console>"
		}
		return json.Marshal(struct {
			Text string `json:"text"`
		}{text})
	}
	return json.Marshal(Payload{Seq: e.Seq, Time: e.Time.UTC(), Type: string(e.Type), Actor: e.Actor, Subject: e.Subject,
		Task: e.Task, Lease: e.Lease, Outcome: e.Outcome, Reasons: e.Reasons, Details: e.Details, Text: Summary(e), URL: link})
}

// approvalLink is the console page of the approval e is about: for the
// approval events, when latch has a console.
func approvalLink(console string, e broker.Event) string {
	id := e.Details["approval_id"]
	if console == "" || id == "" || !strings.HasPrefix(string(e.Type), "approval_") {
		return ""
	}
	return console + "/approvals/" + url.PathEscape(id)
}

// Summary is the one-line plain text of an event, the Payload's Text.
// Values from the event are quoted when they hold anything but letters,
// digits and -._:/@+, and non-printing characters in them are escaped.
func Summary(e broker.Event) string { return summarize(e, plainText) }

// SlackText is the Slack mrkdwn text of an event, a Slack webhook's
// body: one line in which every value from the event is in a code span
// with &, < and > escaped, so that no mention, link or formatting comes
// from it.
func SlackText(e broker.Event) string { return summarize(e, slackMrkdwn) }

// summarize writes e's summary in format f.
func summarize(e broker.Event, f format) string {
	var b strings.Builder
	b.WriteString("latch: ")
	switch e.Type {
	case broker.EventApprovalRequested:
		summarizeRequested(&b, e, f)
	case broker.EventAlert:
		summarizeAlert(&b, e, f)
	case broker.EventApprovalApproved, broker.EventApprovalDenied, broker.EventApprovalExpired, broker.EventApprovalReview:
		summarizeReview(&b, e, f)
	default:
		summarizeOther(&b, e, f)
	}
	if e.Outcome != "" {
		fmt.Fprintf(&b, " [%s]", f.value(e.Outcome))
	}
	if len(e.Reasons) > 0 {
		b.WriteString(" reasons: ")
		writeList(&b, e.Reasons, f)
	}
	if r := e.Details["reason"]; r != "" {
		fmt.Fprintf(&b, " — %s", f.value(r))
	}
	return b.String()
}

func summarizeRequested(b *strings.Builder, e broker.Event, f format) {
	d := e.Details
	fmt.Fprintf(b, "approval requested: %s asks for task %s", f.value(e.Actor), f.value(e.Task))
	if d["approval_id"] != "" {
		fmt.Fprintf(b, " (approval %s, %s approval(s) needed by %s)", f.value(d["approval_id"]), f.value(d["required"]), f.value(d["expires_at"]))
	}
}

func summarizeAlert(b *strings.Builder, e broker.Event, f format) {
	d := e.Details
	fmt.Fprintf(b, "alert: %s was issued task %s at tier %s (lease %s)", f.value(e.Actor), f.value(e.Task), f.value(d["tier"]), f.value(e.Lease))
	if why := d["tier_why"]; why != "" {
		fmt.Fprintf(b, " because %s", f.value(why))
	}
}

func summarizeReview(b *strings.Builder, e broker.Event, f format) {
	b.WriteString(strings.ReplaceAll(string(e.Type), "_", " "))
	if id := e.Details["approval_id"]; id != "" {
		fmt.Fprintf(b, ": approval %s", f.value(id))
	}
	if e.Task != "" {
		fmt.Fprintf(b, " for task %s", f.value(e.Task))
	}
	if e.Subject != "" {
		fmt.Fprintf(b, " of %s", f.value(e.Subject))
	}
	if e.Actor != "" {
		fmt.Fprintf(b, " by %s", f.value(e.Actor))
	}
}

func summarizeOther(b *strings.Builder, e broker.Event, f format) {
	// Latch writes only the types it knows; any other (a record forged
	// or from a newer latch) is a value like the rest.
	if slices.Contains(KnownEvents, string(e.Type)) {
		b.WriteString(string(e.Type))
	} else {
		b.WriteString(f.value(string(e.Type)))
	}
	if e.Subject != "" {
		fmt.Fprintf(b, ": %s", f.value(e.Subject))
	} else if e.Actor != "" {
		fmt.Fprintf(b, ": %s", f.value(e.Actor))
	}
	if e.Task != "" {
		fmt.Fprintf(b, " task %s", f.value(e.Task))
	}
	if e.Lease != "" {
		fmt.Fprintf(b, " lease %s", f.value(e.Lease))
	}
	if e.Actor != "" && e.Subject != "" {
		fmt.Fprintf(b, " by %s", f.value(e.Actor))
	}
}

// writeList writes values, comma-separated, at most maxReasons of them.
func writeList(b *strings.Builder, values []string, f format) {
	for i, v := range values {
		if i == maxReasons {
			fmt.Fprintf(b, " and %d more", len(values)-maxReasons)
			return
		}
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(f.value(v))
	}
}

// plainValue is plainText's quoting: bare when safe, else a Go string
// literal, which escapes quotes, control and format characters (U+202E
// among them), line separators and invalid UTF-8.
func plainValue(s string) string {
	s = truncate(s)
	if isBare(s) {
		return s
	}
	return strconv.Quote(s)
}

// isBare reports whether s can be written unquoted: it is not empty and
// holds only ASCII letters and digits and -._:/@+ — enough for SPIFFE
// IDs, ULIDs, timestamps and numbers, never a space, a quote or a
// right-to-left letter, so it cannot read as more than one word.
func isBare(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-._:/@+", c) >= 0) {
			return false
		}
	}
	return true
}

// slackGrave stands in for a backtick in a Slack value. Slack's code
// spans have no escape: a backtick in the value would end the span and
// let the rest be read as mrkdwn (and ``` open a block). U+02CB MODIFIER
// LETTER GRAVE ACCENT looks alike and means nothing to Slack, so the
// reader still sees roughly what the agent sent.
const slackGrave = "\u02cb"

// slackEscaper applies Slack's documented escaping of the only three
// characters Slack decodes, and replaces backticks, in one pass.
var slackEscaper = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", "`", slackGrave)

// slackValue is slackMrkdwn's quoting: non-printing characters escaped
// as in plainValue (a newline would end the code span, U+202E reorder
// the line), backticks replaced, &, < and > escaped, all in one code
// span. Spaces at the ends are dropped: a span must not open or close on
// one to be read as code. An empty value is written as "" outside any
// span: an empty pair of backticks is no span, and could pair with the
// next one.
func slackValue(s string) string {
	s = strings.Trim(escapeUnprintable(truncate(s)), " ")
	if s == "" {
		return `""`
	}
	return "`" + slackEscaper.Replace(s) + "`"
}

// escapeUnprintable writes, as Go escapes (\n, \x00, \u202e, \xff),
// every rune strconv.IsPrint refuses — control, format, line and
// paragraph separators, spaces other than ASCII's, private use — and
// each byte of invalid UTF-8, and keeps the rest.
func escapeUnprintable(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case strconv.IsPrint(r):
			b.WriteString(s[i : i+n])
		default:
			q := strconv.QuoteRune(r) // '\n', '\u202e'
			b.WriteString(q[1 : len(q)-1])
		}
		i += n
	}
	return b.String()
}

// truncate keeps the first maxValueRunes runes of s, and marks the cut.
func truncate(s string) string {
	n := 0
	for i := range s {
		if n == maxValueRunes {
			return s[:i] + "…"
		}
		n++
	}
	return s
}
