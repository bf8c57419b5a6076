package notify

import (
	"encoding/json"
	"maps"
	"math"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/latchbroker/latch/broker"
)

// Seeds live in testdata/fuzz/<FuzzName>/. Run one target with, e.g.:
//
//	go test -run '^$' -fuzz '^FuzzVerify$' -fuzztime 60s ./notify/

// FuzzVerify checks arbitrary X-Latch-Timestamp and X-Latch-Signature
// values as a receiver would. Verify must never panic and accepts only
// Sign's own signature over exactly that timestamp string and body, within
// tolerance. A delivery signed by Sign verifies, and changing its body,
// timestamp (even to a string naming the same second), signature or secret
// makes it fail.
func FuzzVerify(f *testing.F) {
	const at = 1796000000 // 2026-11-30
	body := []byte(`{"seq":1,"time":"2026-11-30T02:00:00Z","type":"pause","subject":"spiffe://example.org/agent/a","text":"latch: pause: spiffe://example.org/agent/a"}`)
	secret := []byte("whsec-0123456789")
	ts := strconv.Itoa(at)
	good := Sign(secret, ts, body)
	f.Add(secret, ts, good, body, int64(at), int64(0), int64(5*time.Minute))
	f.Add(secret, ts, good, body, int64(at+300), int64(0), int64(5*time.Minute))
	f.Add(secret, ts, good, body, int64(at-301), int64(0), int64(5*time.Minute))
	f.Add(secret, "+"+ts, good, body, int64(at), int64(0), int64(5*time.Minute))
	f.Add(secret, "0"+ts, good, body, int64(at), int64(0), int64(5*time.Minute))
	f.Add(secret, ts+".5", good, body, int64(at), int64(0), int64(5*time.Minute))
	f.Add(secret, ts, strings.ToUpper(good), body, int64(at), int64(0), int64(5*time.Minute))
	f.Add(secret, ts, strings.TrimPrefix(good, "sha256="), body, int64(at), int64(0), int64(5*time.Minute))
	f.Add(secret, ts, "sha256=", body, int64(at), int64(0), int64(5*time.Minute))
	f.Add(secret, ts, "", body, int64(at-10), int64(0), int64(10*time.Second))
	f.Add(secret, ts, "", body, int64(at-10), int64(1), int64(10*time.Second))
	f.Add(secret, "1e9", "", body, int64(at), int64(0), int64(1<<62))
	f.Add([]byte(nil), ts, Sign(nil, ts, body), body, int64(at), int64(999999999), int64(time.Second))
	f.Add(secret, "", good, []byte(nil), int64(at), int64(0), int64(5*time.Minute))
	f.Add(secret, "9223372036854775807", good, body, int64(at), int64(0), int64(1<<62))
	f.Add(secret, "-9223372036854775808", good, body, int64(-1<<62), int64(0), int64(1<<62))
	f.Add(secret, ts, good, body, int64(at), int64(0), int64(-1))
	f.Fuzz(func(t *testing.T, secret []byte, ts, sig string, body []byte, nowSec, nowNsec, tolNs int64) {
		now := time.Unix(nowSec%(1<<40), nowNsec%int64(time.Second))
		tol := time.Duration(tolNs)

		// Arbitrary headers; an empty signature stands for Sign's over
		// them, so that the timestamp checks are reached.
		if sig == "" {
			sig = Sign(secret, ts, body)
		}
		err := Verify(secret, ts, sig, body, now, tol)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "notify: ") {
				t.Fatalf("error %q lacks the package prefix", err)
			}
		} else {
			if sig != Sign(secret, ts, body) {
				t.Fatalf("Verify accepted signature %q for ts %q, body %q", sig, ts, body)
			}
			sec, err := strconv.ParseInt(ts, 10, 64)
			if err != nil {
				t.Fatalf("Verify accepted timestamp %q: %v", ts, err)
			}
			// |now - ts| ≤ tol, in exact arithmetic.
			d := new(big.Int).Sub(big.NewInt(now.Unix()), big.NewInt(sec))
			d.Mul(d, big.NewInt(int64(time.Second)))
			d.Add(d, big.NewInt(int64(now.Nanosecond())))
			// A negative tolerance refuses everything, but for
			// math.MinInt64, which Verify negates to itself: a caller's
			// error, left alone here.
			if d.Abs(d).Cmp(big.NewInt(int64(tol))) > 0 && tol != math.MinInt64 {
				t.Fatalf("Verify accepted timestamp %q at %s with tolerance %s", ts, now.Format(time.RFC3339Nano), tol)
			}
		}

		// A delivery signed now, as Notifier.send signs it.
		tol = tol % (24 * time.Hour)
		if tol < 0 {
			tol = -tol
		}
		signedAt := now.Truncate(time.Second)
		ts = strconv.FormatInt(signedAt.Unix(), 10)
		sig = Sign(secret, ts, body)
		if !strings.HasPrefix(sig, "sha256=") || len(sig) != len("sha256=")+64 {
			t.Fatalf("Sign = %q", sig)
		}
		if err := Verify(secret, ts, sig, body, signedAt, tol); err != nil {
			t.Fatalf("own signature refused: %v", err)
		}
		if err := Verify(secret, ts, sig, body, signedAt.Add(tol), tol); err != nil {
			t.Fatalf("own signature refused at the edge of tolerance %s: %v", tol, err)
		}
		if err := Verify(secret, ts, sig, body, signedAt.Add(-tol), tol); err != nil {
			t.Fatalf("own signature refused at the edge of tolerance -%s: %v", tol, err)
		}
		if err := Verify(secret, ts, sig, body, signedAt.Add(tol+1), tol); err == nil {
			t.Fatalf("own signature accepted just past tolerance %s", tol)
		}
		if err := Verify(secret, ts, sig, body, signedAt.Add(-tol-1), tol); err == nil {
			t.Fatalf("own signature accepted just before tolerance -%s", tol)
		}
		mustFail := func(what, ts, sig string, secret, body []byte) {
			t.Helper()
			if err := Verify(secret, ts, sig, body, signedAt, tol); err == nil {
				t.Fatalf("accepted with %s: ts %q, sig %q, body %q", what, ts, sig, body)
			}
		}
		mustFail("a byte appended to the body", ts, sig, secret, append(body[:len(body):len(body)], 'x'))
		if len(body) > 0 {
			changed := append([]byte(nil), body...)
			changed[len(changed)/2] ^= 1
			mustFail("a body bit flipped", ts, sig, secret, changed)
			mustFail("the body cut short", ts, sig, secret, body[:len(body)-1])
		}
		mustFail("the timestamp a second later", strconv.FormatInt(signedAt.Unix()+1, 10), sig, secret, body)
		mustFail("a leading zero on the timestamp", "0"+ts, sig, secret, body)
		mustFail("a plus sign on the timestamp", "+"+ts, sig, secret, body)
		mustFail("the signature's case changed", ts, strings.ToUpper(sig), secret, body)
		mustFail("no signature", ts, "", secret, body)
		mustFail("the prefix alone", ts, "sha256=", secret, body)
		mustFail("the bare hex", ts, strings.TrimPrefix(sig, "sha256="), secret, body)
		digit := "0"
		if sig[len(sig)-1] == '0' {
			digit = "1"
		}
		mustFail("the signature's last digit changed", ts, sig[:len(sig)-1]+digit, secret, body)
		if len(secret) > 0 {
			// Not a byte appended: HMAC pads short keys with zeros, so
			// "k" and "k\x00" are the same key.
			other := append([]byte(nil), secret...)
			other[0] ^= 0x80
			mustFail("another secret", ts, sig, other, body)
		}
	})
}

// FuzzPayload renders arbitrary events as webhook bodies: render never
// fails for a time JSON can hold, and what a receiver decodes from the
// body is the event (with invalid UTF-8 replaced, as encoding/json does)
// and its Summary; a Slack body is {"text": SlackText}.
func FuzzPayload(f *testing.F) {
	f.Add(uint64(1), int64(1796000000), int64(0), "approval_requested", "spiffe://example.org/agent/a", "", "deploy", "", "approval_required",
		"tier:high", "approval_id=ap-1&required=1&expires_at=2026-11-30T03:00:00Z")
	f.Add(uint64(2), int64(1796000000), int64(5), "approval_approved", "spiffe://example.org/ops/alice", "spiffe://example.org/agent/a", "deploy", "", "",
		"", "approval_id=ap-1&reason=looks fine")
	f.Add(uint64(3), int64(-62135596800), int64(0), "pause", "latch", "spiffe://example.org/agent/a", "", "", "",
		"", "reason=5 denials in 10m0s")
	f.Add(uint64(4), int64(253402300799), int64(999999999), "revoke", "admin-socket", "", "", "l-1", "",
		"", "")
	f.Add(uint64(5), int64(253402300800), int64(0), "issue", "a", "", "t", "l", "allow", "", "") // year 10000
	f.Add(uint64(6), int64(0), int64(0), "violation", "spiffe://example.org/agent/\xff", "\xed\xa0\x80", "<task>", "", "deny",
		"rate,window:business-hours", "\xff=\xfe&k=\u2028")
	f.Fuzz(func(t *testing.T, seq uint64, sec, nsec int64, typ, actor, subject, task, lease, outcome, reasons, details string) {
		e := broker.Event{Seq: seq, Time: time.Unix(sec, nsec), Type: broker.EventType(typ), Actor: actor, Subject: subject,
			Task: task, Lease: lease, Outcome: outcome, PrevHash: "ab", Hash: "cd"}
		if reasons != "" {
			e.Reasons = strings.Split(reasons, ",")
		}
		if details != "" {
			e.Details = map[string]string{}
			for _, kv := range strings.Split(details, "&") {
				k, v, _ := strings.Cut(kv, "=")
				e.Details[k] = v
			}
		}
		body, err := render(e, false, "")
		if y := e.Time.UTC().Year(); y < 0 || y > 9999 {
			if err == nil {
				t.Fatalf("rendered an event of year %d: %s", y, body)
			}
			return
		}
		if err != nil {
			t.Fatalf("render(%+v): %v", e, err)
		}
		var p Payload
		if err := json.Unmarshal(body, &p); err != nil {
			t.Fatalf("body %s does not decode: %v", body, err)
		}
		text := Summary(e)
		want := Payload{Seq: e.Seq, Time: e.Time.UTC(), Type: jsonString(typ), Actor: jsonString(actor), Subject: jsonString(subject),
			Task: jsonString(task), Lease: jsonString(lease), Outcome: jsonString(outcome), Text: jsonString(text)}
		for _, r := range e.Reasons {
			want.Reasons = append(want.Reasons, jsonString(r))
		}
		if e.Details != nil {
			// Keys that coerce alike: the last in sorted order wins, as
			// encoding/json writes map keys sorted.
			want.Details = map[string]string{}
			for _, k := range slices.Sorted(maps.Keys(e.Details)) {
				want.Details[jsonString(k)] = jsonString(e.Details[k])
			}
		}
		if !p.Time.Equal(want.Time) {
			t.Fatalf("time %s, want %s", p.Time, want.Time)
		}
		p.Time, want.Time = time.Time{}, time.Time{}
		if !payloadEqual(p, want) {
			t.Fatalf("decoded %+v\nwant    %+v", p, want)
		}
		if strings.Contains(string(body), `"prev_hash"`) || strings.Contains(string(body), `"hash"`) {
			t.Fatalf("payload carries the hash chain: %s", body)
		}

		slack, err := render(e, true, "")
		if err != nil {
			t.Fatalf("render slack: %v", err)
		}
		var s map[string]any
		if err := json.Unmarshal(slack, &s); err != nil || len(s) != 1 || s["text"] != SlackText(e) {
			t.Fatalf("slack body %s, want {\"text\": %q}: %v", slack, SlackText(e), err)
		}
		if r, ok := unprintable(text); ok {
			t.Fatalf("Summary %q holds %U", text, r)
		}
	})
}

// FuzzSlackText renders events of arbitrary values (and any type, known
// or not) as Slack text. Property: once the code spans latch wrote are
// taken out, what is left holds no <, > or & and is the same as for an
// event of the same shape whose values are all "x" — no text of the
// event's comes out of its span; the spans pair up, none is empty, and
// none holds <, > or an & that is not one of Slack's escapes; the text
// is one line of printable characters. The JSON body's Text is one such
// line too.
func FuzzSlackText(f *testing.F) {
	f.Add(uint8(0), "", "<!channel>", "<!here>", "<@U123>", "<https://evil.example|Click here to approve>", "&lt;", "`a`,```b```", "*bold* _it_ ~strike~\n\u202e")
	f.Add(uint8(2), "", "`", "``", "```", "` <!channel> `", " ", "&,&amp;,&&", "\xff\xfe")
	f.Add(uint8(0), "<!everyone>", "a\u2028b", "\x00", "\r\n", "\u2066\u2069\u200b\ufeff", "&#60;", "", "")
	f.Add(uint8(5), "", "spiffe://example.org/agent/a", "", "report", "01JABC", "issued", "rate,window:biz", "run")
	f.Fuzz(func(t *testing.T, typ uint8, otherType, actor, subject, task, lease, outcome, reasons, detail string) {
		e := broker.Event{Type: broker.EventType(otherType), Actor: actor, Subject: subject, Task: task, Lease: lease, Outcome: outcome}
		if otherType == "" {
			e.Type = broker.EventType(KnownEvents[int(typ)%len(KnownEvents)])
		}
		if reasons != "" {
			e.Reasons = strings.Split(reasons, ",")
		}
		if detail != "" {
			// Every key a summary reads, each with the same text.
			e.Details = map[string]string{}
			for _, k := range detailKeys {
				e.Details[k] = detail
			}
		}
		checkSlack(t, e)
		if r, ok := unprintable(Summary(e)); ok {
			t.Fatalf("Summary %q holds %U", Summary(e), r)
		}
	})
}

// jsonString is s as encoding/json transmits it: each byte of invalid
// UTF-8 becomes U+FFFD.
func jsonString(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 {
			b.WriteRune(utf8.RuneError)
		} else {
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

func payloadEqual(a, b Payload) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}
