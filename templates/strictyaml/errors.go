package strictyaml

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Pos is a position in a config file. Line and Col are 1-based; a zero Line
// means the position is the file as a whole.
type Pos struct {
	File string
	Line int
	Col  int
}

// String renders "file:line:col", the form editors and CI annotate.
func (p Pos) String() string {
	switch {
	case p.File == "" && p.Line == 0:
		return ""
	case p.Line == 0:
		return p.File
	}
	return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Col)
}

// IsZero reports whether p carries no position at all.
func (p Pos) IsZero() bool { return p == Pos{} }

// Errorf returns an *Error at p.
func (p Pos) Errorf(format string, args ...any) *Error {
	return &Error{Pos: p, Msg: fmt.Sprintf(format, args...)}
}

// Error is one problem in a config file, printed as "file:line:col: message".
type Error struct {
	Pos Pos
	Msg string
	// Syntax is set when the file could not be parsed at all (invalid YAML,
	// empty, several documents), so nothing was decoded from it.
	Syntax bool
}

func (e *Error) Error() string {
	if s := e.Pos.String(); s != "" {
		return s + ": " + e.Msg
	}
	return e.Msg
}

// Errors is every problem found in one load, so an operator fixes them all in
// one pass instead of one per run. Err sorts it by file, line and column.
type Errors []*Error

// Error prints one error per line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Add appends err, flattening Errors and keeping an *Error's position. Any
// other error is kept with no position. A nil err is ignored.
func (es *Errors) Add(err error) {
	if err == nil {
		return
	}
	var list Errors
	if errors.As(err, &list) {
		*es = append(*es, list...)
		return
	}
	var one *Error
	if errors.As(err, &one) {
		*es = append(*es, one)
		return
	}
	*es = append(*es, &Error{Msg: err.Error()})
}

// Syntax reports whether any error means the file could not be parsed, in
// which case nothing was decoded and checks that depend on content would
// only add noise.
func (es Errors) Syntax() bool {
	for _, e := range es {
		if e.Syntax {
			return true
		}
	}
	return false
}

// Err returns nil when es is empty, otherwise es sorted by position.
func (es Errors) Err() error {
	if len(es) == 0 {
		return nil
	}
	sort.SliceStable(es, func(i, j int) bool {
		a, b := es[i].Pos, es[j].Pos
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Col < b.Col
	})
	return es
}
