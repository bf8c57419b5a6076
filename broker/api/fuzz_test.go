package api_test

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker/api"
)

// Seeds live in testdata/fuzz/<FuzzName>/. Run one target with, e.g.:
//
//	go test -run '^$' -fuzz '^FuzzParseAge$' -fuzztime 60s ./broker/api/

// FuzzParseAge parses arbitrary ?unused= values: ParseAge must never
// panic, an accepted age is positive, "Nd" is exactly N days (whole days
// only, at most 100 years), anything else is what time.ParseDuration
// says, and an accepted age parses back from its own String.
func FuzzParseAge(f *testing.F) {
	for _, s := range []string{
		"30d", "1d", "36500d", "36501d", "0d", "-1d", "+7d", "007d", "1.5d", "d", "dd", "30 d", " 30d",
		"12h", "90m", "1h30m", "0", "0s", "-1h", "1.5h", "300ms", "1ns", "2562047h47m16.854775807s",
		"9223372036854775807ns", "9223372036854775808ns", "", "30", "1w", "1h1d",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := api.ParseAge(s)
		if err != nil {
			if d != 0 {
				t.Fatalf("ParseAge(%q) = %s with error %v", s, d, err)
			}
			if !strings.Contains(err.Error(), strconv.Quote(s)) {
				t.Fatalf("ParseAge(%q): error %q does not quote the input", s, err)
			}
		} else if d <= 0 {
			t.Fatalf("ParseAge(%q) = %s, not positive", s, d)
		}
		if days, ok := strings.CutSuffix(s, "d"); ok {
			n, aerr := strconv.Atoi(days)
			wantOK := aerr == nil && n > 0 && n <= 100*365
			if wantOK != (err == nil) {
				t.Fatalf("ParseAge(%q) = %s, %v; want ok=%t", s, d, err, wantOK)
			}
			if wantOK && d != time.Duration(n)*24*time.Hour {
				t.Fatalf("ParseAge(%q) = %s, want %d days", s, d, n)
			}
		} else {
			want, perr := time.ParseDuration(s)
			if wantOK := perr == nil && want > 0; wantOK != (err == nil) || (wantOK && d != want) {
				t.Fatalf("ParseAge(%q) = %s, %v; time.ParseDuration = %s, %v", s, d, err, want, perr)
			}
		}
		if err != nil {
			return
		}
		if again, err := api.ParseAge(d.String()); err != nil || again != d {
			t.Fatalf("ParseAge(%q) = %s, but ParseAge(%q) = %s, %v", s, d, d.String(), again, err)
		}
	})
}

// FuzzDurationJSON unmarshals arbitrary JSON into a Duration, alone and
// as a field: no panic, every refusal is ErrDurationFormat, and a value
// that unmarshals marshals to a JSON string that unmarshals to the same
// value (so durations survive a client → server → client round trip).
func FuzzDurationJSON(f *testing.F) {
	for _, s := range []string{
		`"10m"`, `"90s"`, `"1h30m"`, `"0s"`, `"0"`, `"-5m"`, `"1.5h"`, `"300ms"`, `"1µs"`, `"1us"`,
		`"2562047h47m16.854775807s"`, `"-2562047h47m16.854775808s"`, `"2562047h47m16.854775808s"`,
		`600`, `"600"`, `null`, `""`, `true`, `{}`, `[]`, `"10m" `, ` "10m"`, `"\u0031\u0030m"`, `"10m`, `"1d"`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var d api.Duration
		err := d.UnmarshalJSON(b)
		if err != nil {
			if !errors.Is(err, api.ErrDurationFormat) {
				t.Fatalf("UnmarshalJSON(%q): error %v is not ErrDurationFormat", b, err)
			}
			if d != 0 {
				t.Fatalf("UnmarshalJSON(%q) failed but set %s", b, d)
			}
		} else {
			out, err := d.MarshalJSON()
			if err != nil {
				t.Fatalf("MarshalJSON(%s): %v", d, err)
			}
			var s string
			if err := json.Unmarshal(out, &s); err != nil || s != d.String() {
				t.Fatalf("MarshalJSON(%s) = %s, not the JSON string %q", d, out, d.String())
			}
			var again api.Duration
			if err := again.UnmarshalJSON(out); err != nil || again != d {
				t.Fatalf("UnmarshalJSON(%q) = %s, marshals to %s, which unmarshals to %s, %v", b, d, out, again, err)
			}
		}

		// The same through encoding/json, as a field of a request or
		// response: it must agree with UnmarshalJSON on every JSON value.
		if !json.Valid(b) {
			return
		}
		var v struct {
			TTL api.Duration `json:"ttl"`
		}
		doc := append(append([]byte(`{"ttl":`), b...), '}')
		if jerr := json.Unmarshal(doc, &v); (jerr == nil) != (err == nil) || v.TTL != d {
			t.Fatalf("json.Unmarshal(%s) = %s, %v; UnmarshalJSON = %s, %v", doc, v.TTL, jerr, d, err)
		}
		if err != nil {
			return
		}
		out, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		var back struct {
			TTL api.Duration `json:"ttl"`
		}
		if err := json.Unmarshal(out, &back); err != nil || back != v {
			t.Fatalf("%s → %+v → %s → %+v, %v", doc, v, out, back, err)
		}
	})
}
