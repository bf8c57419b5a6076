package templates

import (
	"strings"
	"testing"
)

var slashChars = func() charSet { cs, _ := compileAllow([]string{"slash"}); return cs }()

// TestCheckPatternChars: a pattern loads only if every character it can
// match is one the parameter allows; what it admits beyond is named.
func TestCheckPatternChars(t *testing.T) {
	tests := []struct {
		name    string
		pattern string
		chars   charSet
		want    string // substring of the error; "" = accepted
	}{
		{"Digits", `^[0-9]{1,9}$`, charSet{}, ""},
		{"Order", `^ord_[0-9A-Za-z]{10,24}$`, charSet{}, ""},
		{"Alternation", `^(eu|us)$`, charSet{}, ""},
		{"PerlClasses", `^\d+\w*$`, charSet{}, ""},
		{"POSIXClass", `^[[:alnum:]]+$`, charSet{}, ""},
		{"AllPunctuation", `^[a-z._:@-]+$`, charSet{}, ""},
		{"WordBoundary", `^\bab\b$`, charSet{}, ""},
		{"Path", `^[a-z0-9-]+(/[a-z0-9-]+){0,3}$`, slashChars, ""},
		{"CaseFoldDigits", `(?i)^[0-9]+$`, charSet{}, ""},

		{"ErrAnyStar", `^.*$`, charSet{}, "admits any character (. matches everything but a newline)"},
		{"ErrAnyPlus", `^.+$`, charSet{}, "admits any character"},
		{"ErrAnyDotAll", `(?s)^.+$`, charSet{}, "admits any character ((?s). matches everything)"},
		{"ErrAnyInside", `^ord_(.){4}$`, charSet{}, "admits any character"},
		{"ErrNegatedClass", `^[^x]+$`, charSet{}, `'\x00' (U+0000), a control character`},
		{"ErrNegatedPerl", `^\S+$`, charSet{}, `'\x00' (U+0000)`},
		{"ErrNegatedWithSlash", `^[^/]+$`, slashChars, `'\x00' (U+0000)`},
		{"ErrUnicodeLetters", `^\pL+$`, charSet{}, `'ª' (U+00AA)`},
		{"ErrSlash", `^[a-z/]+$`, charSet{}, "or add allow: [slash] to the parameter"},
		{"ErrSlashLiteral", `^eu/[a-z]+$`, charSet{}, `admits '/' (U+002F), which params.x does not allow`},
		{"ErrSlashInWordClass", `^[\w/]+$`, charSet{}, `'/' (U+002F)`},
		{"ErrSpace", `^[a-z ]+$`, slashChars, `' ' (U+0020), which params.x does not allow; narrow it to the characters the value needs, such as [a-z0-9-] (letters, digits and . _ : @ - /); no allow: opt-in admits it`},
		{"ErrWhitespace", `^a\sb$`, charSet{}, `'\t' (U+0009), a control character`},
		{"ErrNewline", `^a\nb$`, charSet{}, `'\n' (U+000A), a control character`},
		{"ErrNUL", `^a\x00$`, charSet{}, `'\x00' (U+0000)`},
		{"ErrRLO", `^a\x{202E}b$`, charSet{}, `'\u202e' (U+202E), an invisible Unicode format character`},
		{"ErrComma", `^[a-z,]+$`, charSet{}, `',' (U+002C)`},
		{"ErrPercent", `^[a-z%0-9]+$`, slashChars, `'%' (U+0025)`},
		{"ErrWildcard", `^secret\*$`, charSet{}, `'*' (U+002A)`},
		{"ErrFoldLiteral", `(?i)^k$`, charSet{}, `(U+212A): case-insensitive matching ((?i)) folds ASCII letters to look-alikes`},
		{"ErrFoldClass", `(?i)^[a-z]+$`, charSet{}, `(U+017F): case-insensitive matching`},
		{"ErrInAlternative", `^(eu|u s)$`, charSet{}, `' ' (U+0020)`},
		{"ErrInZeroRepeat", `^a(/){0}$`, charSet{}, `'/' (U+002F)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkPatternChars(tt.pattern, tt.chars, "params.x")
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("%s refused: %v", tt.pattern, err)
			case tt.want != "" && err == nil:
				t.Fatalf("%s accepted", tt.pattern)
			case tt.want != "" && !strings.Contains(err.Error(), tt.want):
				t.Fatalf("error %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

// FuzzPatternChars checks that checkPatternChars is sound: whenever it
// accepts a pattern, every value the pattern matches holds only allowed
// characters, so the load-time check never promises what the request-time
// check then refuses.
func FuzzPatternChars(f *testing.F) {
	for _, s := range []struct {
		pattern, value string
		slash          bool
	}{
		{`^[0-9]{1,9}$`, "42", false},
		{`^ord_[0-9A-Za-z]{10,24}$`, "ord_abcdefghij", false},
		{`^[a-z0-9-]+(/[a-z0-9-]+)*$`, "team/app", true},
		{`(?i)^k$`, "\u212a", false},
		{`^[^x]+$`, "a\u202eb", false},
		{`^.*$`, "../../sys/policy/x", false},
		{`^\w+$`, "a\x00", false},
		{`(?i)^[a-z]+$`, "\u017f", false},
	} {
		f.Add(s.pattern, s.value, s.slash)
	}
	f.Fuzz(func(t *testing.T, pattern, value string, slash bool) {
		cs := charSet{}
		if slash {
			cs = slashChars
		}
		re, err := compileAnchored(pattern)
		if err != nil || checkPatternChars(pattern, cs, "params.x") != nil {
			return
		}
		if !re.MatchString(value) {
			return
		}
		for _, r := range value {
			if !cs.has(r) {
				t.Fatalf("%q accepted, yet it matches %q, which holds %U", pattern, value, r)
			}
		}
	})
}
