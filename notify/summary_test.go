package notify

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/latchbroker/latch/broker"
)

// hostile are the strings an agent (or anyone who can reach the API)
// would send to turn a notification against its readers.
var hostile = map[string]string{
	"channel":     "<!channel>",
	"here":        "<!here>",
	"user":        "<@U123>",
	"link":        "<https://evil.example|Click here to approve>",
	"bareURL":     "https://evil.example/approve",
	"preEscaped":  "&lt;!channel&gt; &amp; &#60;",
	"ampersand":   "R&D & co",
	"backtick":    "a`b` <!here>",
	"breakOut":    "` <!channel> `",
	"fence":       "```\n<!channel>\n```",
	"markup":      "*bold* _it_ ~strike~ >quote",
	"newline":     "ok\nlatch: approval approved by alice\r\n",
	"bidi":        "\u202eexe.txt\u202c \u2066x\u2069",
	"separators":  "a\u2028b\u2029c\u0085d\u200be\ufeff",
	"controls":    "\x00\x07\x1b[31mred\x7f",
	"spaces":      "   ",
	"invalidUTF8": "\xff\xfe<!here>",
	"long":        strings.Repeat("<!channel>&", 1000),
	"longRunes":   strings.Repeat("é", 5000),
}

// detailKeys are every Details key the broker writes; a summary reads
// some, and every one may hold a caller's text.
var detailKeys = []string{
	"reason", "approval_id", "required", "expires_at", "tier", "tier_why", "owner", "message", "trace_id",
	"template_version", "next_allowed_at", "pickup_by", "was", "deadline", "condition", "last_error",
	"requested_by", "endpoint", "remote",
}

// hostileEvent is an event of type typ whose every value is v.
func hostileEvent(typ string, v string) broker.Event {
	e := broker.Event{Seq: 7, Time: time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC), Type: broker.EventType(typ),
		Actor: v, Subject: v, Task: v, Lease: v, Outcome: v, Reasons: []string{v, v}, Details: map[string]string{}}
	for _, k := range detailKeys {
		e.Details[k] = v
	}
	return e
}

// TestRender_Hostile feeds the worst strings through every event type,
// in both body formats. Slack: no <, > or & from them outside Slack's
// escapes, none of their text outside the code spans latch writes, spans
// balanced, one line. JSON: Text is one printable line, and the
// structured fields carry the raw values.
func TestRender_Hostile(t *testing.T) {
	for _, typ := range KnownEvents {
		for name, v := range hostile {
			t.Run(typ+"/"+name, func(t *testing.T) {
				e := hostileEvent(typ, v)
				checkSlack(t, e)
				checkPlain(t, e)
				if len(v) < maxValueRunes && utf8.ValidString(v) && strings.TrimSpace(v) != "" {
					// The reader still sees what was sent.
					want := strings.ReplaceAll(escapeUnprintable(v), "`", slackGrave)
					spans := slackSpans(t, SlackText(e))
					for i, s := range spans {
						spans[i] = slackUnescaper.Replace(s)
					}
					if !slices.Contains(spans, strings.Trim(want, " ")) {
						t.Fatalf("no code span shows %q: %q", want, spans)
					}
				}
			})
		}
	}
}

// slackUnescaper decodes Slack's three escapes, as Slack shows them.
var slackUnescaper = strings.NewReplacer("&lt;", "<", "&gt;", ">", "&amp;", "&")

// TestSummary_Examples pins the two formats on an ordinary event and a
// hostile one, so a reader sees what receivers get.
func TestSummary_Examples(t *testing.T) {
	e := broker.Event{Type: broker.EventApprovalRequested, Actor: "spiffe://example.org/agent/ticket-bot", Task: "close-ticket",
		Outcome: "pending", Details: map[string]string{"approval_id": "01JABC", "required": "1", "expires_at": "2026-03-10T13:00:00Z",
			"reason": "customer asked"}}
	for _, tc := range []struct{ name, got, want string }{
		{"Plain", Summary(e), `latch: approval requested: spiffe://example.org/agent/ticket-bot asks for task close-ticket ` +
			`(approval 01JABC, 1 approval(s) needed by 2026-03-10T13:00:00Z) [pending] — "customer asked"`},
		{"Slack", SlackText(e), "latch: approval requested: `spiffe://example.org/agent/ticket-bot` asks for task `close-ticket` " +
			"(approval `01JABC`, `1` approval(s) needed by `2026-03-10T13:00:00Z`) [`pending`] — `customer asked`"},
		{"PlainHostile", Summary(broker.Event{Type: broker.EventViolation, Actor: "<!channel>", Task: "a\nb\u202e", Reasons: []string{"x y", "ok"}}),
			`latch: violation: "<!channel>" task "a\nb\u202e" reasons: "x y", ok`},
		{"SlackHostile", SlackText(broker.Event{Type: broker.EventViolation, Actor: "<!channel>", Task: "a`\nb\u202e&", Reasons: []string{" ", "ok"}}),
			"latch: violation: `&lt;!channel&gt;` task `a\u02cb\\nb\\u202e&amp;` reasons: \"\", `ok`"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.got != tc.want {
				t.Fatalf("got  %s\nwant %s", tc.got, tc.want)
			}
		})
	}
}

// checkSlack checks e's Slack body: {"text"} only, one printable line,
// balanced code spans, no <, > or & but Slack's escapes, and latch's own
// words, outside the spans, the same whatever the event's values are.
func checkSlack(t *testing.T, e broker.Event) {
	t.Helper()
	body, err := render(e, true, "")
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]string
	if err := json.Unmarshal(body, &m); err != nil || len(m) != 1 {
		t.Fatalf("slack body %s: %v", body, err)
	}
	text := m["text"]
	if len(text) > 20000 {
		t.Fatalf("slack text of %d bytes", len(text))
	}
	if r, ok := unprintable(text); ok {
		t.Fatalf("slack text holds %U: %q", r, text)
	}
	for _, s := range slackSpans(t, text) {
		if strings.ContainsAny(s, "<>") || strings.Count(s, "&") != strings.Count(s, "&amp;")+strings.Count(s, "&lt;")+strings.Count(s, "&gt;") {
			t.Fatalf("code span %q holds unescaped Slack control characters", s)
		}
	}
	outside := slackOutside(t, text)
	if strings.ContainsAny(outside, "<>&") {
		t.Fatalf("outside the code spans: %q", outside)
	}
	if want := slackOutside(t, SlackText(placeholders(e))); outside != want {
		t.Fatalf("text outside the code spans depends on the event's values:\n got %q\nwant %q", outside, want)
	}
}

// checkPlain checks e's JSON body: the structured fields are the raw
// values (the receiver escapes them for where it puts them) and Text is
// one printable line.
func checkPlain(t *testing.T, e broker.Event) {
	t.Helper()
	body, err := render(e, false, "")
	if err != nil {
		t.Fatal(err)
	}
	var p Payload
	if err := json.Unmarshal(body, &p); err != nil {
		t.Fatal(err)
	}
	want := Payload{Seq: e.Seq, Time: e.Time, Type: string(e.Type), Actor: jsonString(e.Actor), Subject: jsonString(e.Subject),
		Task: jsonString(e.Task), Lease: jsonString(e.Lease), Outcome: jsonString(e.Outcome), Text: p.Text}
	for _, r := range e.Reasons {
		want.Reasons = append(want.Reasons, jsonString(r))
	}
	if e.Details != nil {
		want.Details = map[string]string{}
		for _, k := range slices.Sorted(maps.Keys(e.Details)) {
			want.Details[jsonString(k)] = jsonString(e.Details[k])
		}
	}
	if !payloadEqual(p, want) {
		t.Fatalf("payload %+v\nwant    %+v", p, want)
	}
	if r, ok := unprintable(p.Text); ok || p.Text != Summary(e) {
		t.Fatalf("text holds %U or is not Summary: %q", r, p.Text)
	}
}

// unprintable returns the first rune of s that a terminal or chat would
// not show as itself: controls, format characters (bidi overrides),
// separators, invalid UTF-8.
func unprintable(s string) (rune, bool) {
	for i, r := range s {
		if r == utf8.RuneError && !strings.HasPrefix(s[i:], "\ufffd") || !strconv.IsPrint(r) {
			return r, true
		}
	}
	return 0, false
}

// slackSpans returns the contents of text's code spans; the backticks
// must pair up.
func slackSpans(t *testing.T, text string) []string {
	t.Helper()
	parts := strings.Split(text, "`")
	if len(parts)%2 == 0 {
		t.Fatalf("unbalanced code spans: %q", text)
	}
	var spans []string
	for i := 1; i < len(parts); i += 2 {
		if parts[i] == "" {
			t.Fatalf("empty code span in %q", text)
		}
		spans = append(spans, parts[i])
	}
	return spans
}

// slackOutside is text with each code span, and each "" that stands
// for an empty value, replaced by one mark: what latch itself wrote.
func slackOutside(t *testing.T, text string) string {
	t.Helper()
	parts := strings.Split(text, "`")
	if len(parts)%2 == 0 {
		t.Fatalf("unbalanced code spans: %q", text)
	}
	var b strings.Builder
	for i, p := range parts {
		if i%2 == 1 {
			b.WriteString("\u25a1")
			continue
		}
		b.WriteString(strings.ReplaceAll(p, `""`, "\u25a1"))
	}
	return b.String()
}

// placeholders is e with each value that is not empty replaced by "x":
// the same summary, were latch's own words all it wrote outside code.
func placeholders(e broker.Event) broker.Event {
	x := func(s string) string {
		if s == "" {
			return ""
		}
		return "x"
	}
	if !slices.Contains(KnownEvents, string(e.Type)) {
		e.Type = broker.EventType(x(string(e.Type)))
	}
	e.Actor, e.Subject, e.Task, e.Lease, e.Outcome = x(e.Actor), x(e.Subject), x(e.Task), x(e.Lease), x(e.Outcome)
	rs := make([]string, len(e.Reasons))
	for i, r := range e.Reasons {
		rs[i] = x(r)
	}
	e.Reasons = rs
	d := make(map[string]string, len(e.Details))
	for k, v := range e.Details {
		d[k] = x(v)
	}
	e.Details = d
	return e
}

func ExampleSlackText() {
	fmt.Println(SlackText(broker.Event{Type: broker.EventPause, Actor: "latch", Subject: "spiffe://example.org/agent/a",
		Outcome: "paused", Details: map[string]string{"reason": "<!channel> *approve* `now`"}}))
	// Output: latch: pause: `spiffe://example.org/agent/a` by `latch` [`paused`] — `&lt;!channel&gt; *approve* ˋnowˋ`
}

// Approval events link to the approval's console page, when latch has a
// console; the ID is path-escaped and a Slack text ends with the link.
func TestRender_ConsoleLink(t *testing.T) {
	e := broker.Event{Seq: 3, Type: broker.EventApprovalRequested, Actor: "spiffe://example.org/agent/a", Task: "payment",
		Details: map[string]string{"approval_id": "01J/../x"}}
	link := approvalLink("https://latch.example.org:8444", e)
	if link != "https://latch.example.org:8444/approvals/01J%2F..%2Fx" {
		t.Fatalf("link = %q", link)
	}
	body, err := render(e, false, link)
	if err != nil {
		t.Fatal(err)
	}
	var p Payload
	if err := json.Unmarshal(body, &p); err != nil || p.URL != link {
		t.Fatalf("payload URL = %q (%v), want %q", p.URL, err, link)
	}
	slack, err := render(e, true, link)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]string
	if err := json.Unmarshal(slack, &m); err != nil || !strings.HasSuffix(m["text"], " <"+link+"|Open in the latch console>") {
		t.Fatalf("slack text = %q (%v)", m["text"], err)
	}
	for _, other := range []broker.Event{{Type: broker.EventIssue, Details: map[string]string{"approval_id": "x"}}, {Type: broker.EventApprovalApproved}} {
		if l := approvalLink("https://latch.example.org", other); l != "" {
			t.Errorf("%s event links to %q", other.Type, l)
		}
	}
	if l := approvalLink("", e); l != "" {
		t.Errorf("without a console: %q", l)
	}
}
