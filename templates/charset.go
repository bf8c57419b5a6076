package templates

import (
	"fmt"
	"regexp/syntax"
	"slices"
	"strings"
	"unicode"
)

// Parameter values are checked against an allowlist of characters, not a
// denylist: a denylist has to foresee every character that means something
// to some renderer (HCL quotes and escapes, Vault path wildcards and
// templating, the commas Vault splits certificate names on, "/" and ".."
// in paths, right-to-left overrides that make an approver read a value
// backwards), and it missed some. By default a value may hold only
//
//	A-Z a-z 0-9 . _ : @ -
//
// which is enough for names, numbers, hosts, versions and e-mail-like
// identifiers, and means nothing to any backend. A template opts one
// parameter in to more with allow: (see allowNames); nothing ever admits a
// control or Unicode format character, whatever the opt-in.

// defaultChars are the punctuation marks every value may contain, besides
// ASCII letters and digits.
const defaultChars = "._:@-"

// allowNames are the opt-ins a parameter may list in allow:, and the
// characters each one adds. The list is short on purpose: a new name is a
// new way for a value to mean something to a renderer, to be reviewed as
// such. "slash" comes with the segment rule of checkValue (no empty, "."
// or ".." segment), so a path can name a subtree but never climb out of it.
var allowNames = map[string]rune{
	"slash": '/',
}

// allowList is allowNames' keys, sorted, for messages.
var allowList = func() string {
	names := make([]string, 0, len(allowNames))
	for n := range allowNames {
		names = append(names, n)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}()

// charSet is the characters one parameter's values may contain: the
// default ones and those its allow: list adds.
type charSet struct {
	extra string // runes added by allow:, in allow: order
}

// has reports whether r may appear in a value.
func (cs charSet) has(r rune) bool {
	switch {
	case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		return true
	case neverAllowed(r):
		return false
	}
	return strings.ContainsRune(defaultChars, r) || strings.ContainsRune(cs.extra, r)
}

// String describes the set for messages, as "letters, digits and . _ : @ -".
func (cs charSet) String() string {
	marks := strings.Split(defaultChars, "")
	marks = append(marks, strings.Split(cs.extra, "")...)
	return "letters, digits and " + strings.Join(marks, " ")
}

// neverAllowed is true for the characters no opt-in can admit: control
// characters, which end lines and strings, and Unicode format characters
// (bidi overrides, zero-width joiners), which are invisible and can make
// a value read differently from what it is.
func neverAllowed(r rune) bool {
	return unicode.Is(unicode.Cc, r) || unicode.Is(unicode.Cf, r)
}

// compileAllow turns an allow: list into a charSet. It returns the error
// messages for unknown or repeated names, indexed like the list.
func compileAllow(names []string) (charSet, map[int]string) {
	var cs charSet
	bad := map[int]string{}
	for i, n := range names {
		r, ok := allowNames[n]
		switch {
		case !ok:
			bad[i] = fmt.Sprintf("unknown name %q; allowed: %s", n, allowList)
		case strings.ContainsRune(cs.extra, r):
			bad[i] = fmt.Sprintf("%q is listed twice", n)
		default:
			cs.extra += string(r)
		}
	}
	return cs, bad
}

// checkValue checks a value against the parameter's characters: not empty,
// not too long, only characters of cs, and, split at "/", no segment that
// is empty, "." or "..", so that a value can neither add a path level out
// of nothing nor climb out of the one it is rendered into. The rule holds
// without the slash opt-in too: a value that is ".." on its own is still
// a climb once rendered between two slashes. It returns "" for a valid
// value, else why not.
func checkValue(v string, cs charSet) string {
	if v == "" {
		return "is empty"
	}
	if len(v) > maxValueLen {
		return fmt.Sprintf("is longer than %d bytes", maxValueLen)
	}
	for _, r := range v {
		if !cs.has(r) {
			return "contains " + describeRune(r) + "; allowed: " + cs.String()
		}
	}
	for seg := range strings.SplitSeq(v, "/") {
		switch seg {
		case "":
			return "has an empty path segment (a leading, trailing or doubled /)"
		case ".", "..":
			return fmt.Sprintf("has the path segment %q, which would climb out of the path it is rendered into", seg)
		}
	}
	return ""
}

// optInHint says how a template author fixes a value checkValue refused
// for a character: the allow: name that admits it, if there is one.
func optInHint(v string, cs charSet) string {
	for _, r := range v {
		if cs.has(r) {
			continue
		}
		if opt := optInFor(r); opt != "" {
			return "; add allow: [" + opt + "] to the parameter, or change the value"
		}
		return "; no allow: opt-in admits it"
	}
	return ""
}

// describeRune names a character for a message, escaped so that an
// invisible or bidi character cannot disturb the message itself.
func describeRune(r rune) string {
	s := fmt.Sprintf("%q (U+%04X)", r, r)
	switch {
	case unicode.Is(unicode.Cc, r):
		s += ", a control character"
	case unicode.Is(unicode.Cf, r):
		s += ", an invisible Unicode format character"
	}
	return s
}

// checkPatternChars refuses a pattern that would admit a character outside
// cs. It walks the parsed pattern and, for every node that consumes a
// character (a literal, a class, "."), checks that each rune it can match
// is allowed: a pattern is a promise about the values it lets through,
// and it must not promise more than the parameter may hold. The value
// check runs at every request anyway; this makes the template say so.
func checkPatternChars(pattern string, cs charSet, path string) error {
	re, err := syntax.Parse(pattern, syntax.Perl)
	if err != nil {
		return fmt.Errorf("invalid regular expression: %v", err)
	}
	a, ok := admitsOutside(re, cs)
	if !ok {
		return nil
	}
	narrow := "narrow it to the characters the value needs, such as [a-z0-9-]"
	switch {
	case a.any:
		return fmt.Errorf("%q admits any character (%s), control and invisible Unicode characters included; %s",
			pattern, a.node, narrow)
	case a.fold:
		return fmt.Errorf("%q admits %s: case-insensitive matching ((?i)) folds ASCII letters to look-alikes outside %s; list both cases instead, such as [A-Za-z]",
			pattern, describeRune(a.r), cs)
	}
	how := narrow + " (" + cs.String() + ")"
	if opt := optInFor(a.r); opt != "" {
		how += ", or add allow: [" + opt + "] to the parameter"
	} else {
		how += "; no allow: opt-in admits it"
	}
	return fmt.Errorf("%q admits %s, which %s does not allow; %s", pattern, describeRune(a.r), path, how)
}

// optInFor is the allow: name that admits r, or "".
func optInFor(r rune) string {
	for n, x := range allowNames {
		if x == r {
			return n
		}
	}
	return ""
}

// admitted is the first character found that a pattern admits outside a
// charSet, and how.
type admitted struct {
	r    rune
	any  bool   // from a node matching any character
	node string // that node, for the message
	fold bool   // only through (?i) case folding
}

// admitsOutside walks re and reports the first character it can match
// that cs does not allow. Nodes that match no character (anchors, word
// boundaries, empty matches) pass; operators pass when their operands do;
// an operator it does not know fails closed.
func admitsOutside(re *syntax.Regexp, cs charSet) (admitted, bool) {
	switch re.Op {
	case syntax.OpNoMatch, syntax.OpEmptyMatch, syntax.OpBeginLine, syntax.OpEndLine,
		syntax.OpBeginText, syntax.OpEndText, syntax.OpWordBoundary, syntax.OpNoWordBoundary:
		return admitted{}, false
	case syntax.OpAnyChar:
		return admitted{r: 0, any: true, node: "(?s). matches everything"}, true
	case syntax.OpAnyCharNotNL:
		return admitted{r: 0, any: true, node: ". matches everything but a newline"}, true
	case syntax.OpLiteral:
		return literalOutside(re, cs)
	case syntax.OpCharClass:
		return classOutside(re, cs)
	case syntax.OpCapture, syntax.OpStar, syntax.OpPlus, syntax.OpQuest, syntax.OpRepeat,
		syntax.OpConcat, syntax.OpAlternate:
		for _, sub := range re.Sub {
			if a, ok := admitsOutside(sub, cs); ok {
				return a, true
			}
		}
		return admitted{}, false
	}
	return admitted{r: 0, any: true, node: "an unrecognised expression " + re.String()}, true
}

// literalOutside checks a literal's runes and, under (?i), every rune each
// folds to: (?i)k also matches U+212A KELVIN SIGN.
func literalOutside(re *syntax.Regexp, cs charSet) (admitted, bool) {
	for _, r := range re.Rune {
		if !cs.has(r) {
			return admitted{r: r}, true
		}
		if re.Flags&syntax.FoldCase == 0 {
			continue
		}
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			if !cs.has(f) {
				return admitted{r: f, fold: true}, true
			}
		}
	}
	return admitted{}, false
}

// classOutside checks a character class, whose Rune holds [lo, hi] pairs
// (the parser has already folded cases into them under (?i)). Scanning
// each range from lo stops at the first rune not allowed; the allowed
// runes are few and ASCII, so even [^x] (0 to U+10FFFF) ends at once.
func classOutside(re *syntax.Regexp, cs charSet) (admitted, bool) {
	ranges := re.Rune
	for i := 0; i+1 < len(ranges); i += 2 {
		for r := ranges[i]; r <= ranges[i+1]; r++ {
			if !cs.has(r) {
				fold := re.Flags&syntax.FoldCase != 0 && r > unicode.MaxASCII && foldsToASCII(r)
				return admitted{r: r, fold: fold}, true
			}
		}
	}
	return admitted{}, false
}

// foldsToASCII reports whether r is a case variant of an ASCII letter,
// such as U+212A KELVIN SIGN of k.
func foldsToASCII(r rune) bool {
	for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
		if f <= unicode.MaxASCII {
			return true
		}
	}
	return false
}
