package strictyaml

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"

	yaml "github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
)

// maxInput bounds what Unmarshal will parse. Config files and templates are
// small; a multi-megabyte one is a mistake or an attack on the parser.
const maxInput = 1 << 20

// Unmarshal parses data (the contents of file, which is only used in error
// messages) as exactly one YAML document holding a mapping, and decodes it
// into v, which must be a non-nil pointer to a struct. The error, if any, is
// an Errors listing every problem found.
func Unmarshal(file string, data []byte, v any) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return fmt.Errorf("strictyaml: Unmarshal needs a non-nil pointer, got %T", v)
	}
	if len(data) > maxInput {
		return Errors{{Pos: Pos{File: file}, Msg: fmt.Sprintf("file is larger than %d bytes", maxInput), Syntax: true}}
	}
	root, perr := parse(file, data)
	if perr != nil {
		perr.Syntax = true
		return Errors{perr}
	}
	d := &decoder{file: file}
	d.decode(root, rv.Elem(), "", d.pos(root))
	return d.errs.Err()
}

// Raw is a YAML value kept undecoded so that its owner (a backend, say)
// decodes it later with its own struct, with errors in the same
// file:line:col form. A Raw field tagged `yaml:",remain"` receives the keys
// of the enclosing mapping that no other field claimed.
type Raw struct {
	file    string
	path    string
	pos     Pos
	node    ast.Node                // a whole value, or nil
	entries []*ast.MappingValueNode // remaining keys of a mapping, when node is nil
	mapping bool                    // entries is meaningful (possibly empty)
}

// IsZero reports whether the Raw holds nothing: the key was absent or null.
func (r Raw) IsZero() bool { return r.node == nil && !r.mapping }

// Pos is where the value starts in its file.
func (r Raw) Pos() Pos { return r.pos }

// Keys lists the mapping keys the Raw holds, in file order; nil if it does
// not hold a mapping.
func (r Raw) Keys() []string {
	entries, ok := r.mappingEntries()
	if !ok {
		return nil
	}
	keys := make([]string, 0, len(entries))
	for _, e := range entries {
		if k, ok := scalarText(e.Key); ok {
			keys = append(keys, k)
		}
	}
	return keys
}

func (r Raw) mappingEntries() ([]*ast.MappingValueNode, bool) {
	if r.mapping {
		return r.entries, true
	}
	if r.node == nil {
		return nil, false
	}
	return mappingOf(r.node)
}

// Decode decodes the Raw value into v (a non-nil pointer) with the same
// strict rules as Unmarshal. A zero Raw decodes to nothing and no error.
func (r Raw) Decode(v any) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return fmt.Errorf("strictyaml: Raw.Decode needs a non-nil pointer, got %T", v)
	}
	d := &decoder{file: r.file}
	switch {
	case r.mapping:
		d.decodeEntries(r.entries, rv.Elem(), r.path, r.pos)
	case r.node != nil:
		d.decode(r.node, rv.Elem(), r.path, r.pos)
	}
	return d.errs.Err()
}

var (
	rawType      = reflect.TypeOf(Raw{})
	posType      = reflect.TypeOf(Pos{})
	durationType = reflect.TypeOf(time.Duration(0))
)

type decoder struct {
	file string
	errs Errors
}

func (d *decoder) errorf(p Pos, format string, args ...any) {
	d.errs = append(d.errs, p.Errorf(format, args...))
}

// parse returns the single document's body, or an error for syntax errors,
// empty files and multi-document files.
func parse(file string, data []byte) (ast.Node, *Error) {
	// Duplicate keys are detected by the decoder, which reports them with the
	// key path and the first definition's line.
	f, err := parser.ParseBytes(data, 0, parser.AllowDuplicateMapKey())
	if err != nil {
		var ye yaml.Error
		if errors.As(err, &ye) {
			p := Pos{File: file}
			if tk := ye.GetToken(); tk != nil && tk.Position != nil {
				p.Line, p.Col = tk.Position.Line, tk.Position.Column
			}
			return nil, p.Errorf("invalid YAML: %s", ye.GetMessage())
		}
		return nil, Pos{File: file}.Errorf("invalid YAML: %v", err)
	}
	var bodies []ast.Node
	for _, doc := range f.Docs {
		if doc == nil || doc.Body == nil {
			continue
		}
		if _, ok := doc.Body.(*ast.CommentGroupNode); ok {
			continue
		}
		bodies = append(bodies, doc.Body)
	}
	switch len(bodies) {
	case 0:
		return nil, Pos{File: file, Line: 1, Col: 1}.Errorf("empty document: expected a mapping")
	case 1:
		return bodies[0], nil
	}
	d := &decoder{file: file}
	return nil, d.pos(bodies[1]).Errorf("only one YAML document is allowed per file")
}

func (d *decoder) pos(n ast.Node) Pos {
	if n == nil {
		return Pos{File: d.file}
	}
	switch m := n.(type) {
	case *ast.MappingNode:
		if !m.IsFlowStyle && len(m.Values) > 0 {
			return d.pos(m.Values[0].Key)
		}
	case *ast.MappingValueNode:
		return d.pos(m.Key)
	}
	tk := n.GetToken()
	if tk == nil || tk.Position == nil {
		return Pos{File: d.file}
	}
	return Pos{File: d.file, Line: tk.Position.Line, Col: tk.Position.Column}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func label(path string) string {
	if path == "" {
		return "top level"
	}
	return path
}

// describe names a node's YAML kind for type errors.
func describe(n ast.Node) string {
	switch n := n.(type) {
	case *ast.MappingNode, *ast.MappingValueNode:
		return "a mapping"
	case *ast.SequenceNode:
		return "a list"
	case *ast.StringNode, *ast.LiteralNode:
		s, _ := scalarText(n)
		return strconv.Quote(s)
	case *ast.NullNode:
		return "null"
	}
	if s, ok := scalarText(n); ok {
		return s
	}
	return "a " + n.Type().String()
}

// scalarText is the text of a scalar node as written (for quoted strings,
// the unquoted value).
func scalarText(n ast.Node) (string, bool) {
	switch n := n.(type) {
	case *ast.StringNode:
		return n.Value, true
	case *ast.LiteralNode:
		if n.Value == nil {
			return "", true
		}
		return n.Value.Value, true
	case *ast.IntegerNode, *ast.FloatNode, *ast.BoolNode, *ast.InfinityNode, *ast.NanNode:
		return n.GetToken().Value, true
	}
	return "", false
}

// mappingOf returns a mapping node's entries.
func mappingOf(n ast.Node) ([]*ast.MappingValueNode, bool) {
	switch m := n.(type) {
	case *ast.MappingNode:
		return m.Values, true
	case *ast.MappingValueNode:
		return []*ast.MappingValueNode{m}, true
	}
	return nil, false
}

// plain rejects YAML features that make config harder to audit (aliases can
// also blow up exponentially) and reports whether n may be decoded.
func (d *decoder) plain(n ast.Node, path string) bool {
	switch n.(type) {
	case *ast.AnchorNode, *ast.AliasNode:
		d.errorf(d.pos(n), "%s: anchors and aliases are not supported", label(path))
		return false
	case *ast.TagNode:
		d.errorf(d.pos(n), "%s: tags are not supported", label(path))
		return false
	case *ast.MergeKeyNode:
		d.errorf(d.pos(n), "%s: merge keys (<<) are not supported", label(path))
		return false
	}
	return true
}

// setSelfPos fills the `yaml:",pos"` fields of a struct with entry.
func setSelfPos(v reflect.Value, entry Pos) {
	if v.Kind() != reflect.Struct {
		return
	}
	for _, idx := range structInfoOf(v.Type()).selfPos {
		v.FieldByIndex(idx).Set(reflect.ValueOf(entry))
	}
}

// decode decodes n into v. entry is the position of the key (for mapping
// values) or item (for list items) that holds n; it fills `yaml:",pos"`.
func (d *decoder) decode(n ast.Node, v reflect.Value, path string, entry Pos) {
	if n == nil {
		return
	}
	// First, so that even a struct whose value is empty (`tokens:`),
	// not a mapping, or refused says where it is.
	setSelfPos(v, entry)
	if _, ok := n.(*ast.NullNode); ok {
		return
	}
	if !d.plain(n, path) {
		return
	}
	t := v.Type()
	switch {
	case t == rawType:
		v.Set(reflect.ValueOf(Raw{file: d.file, path: path, pos: d.pos(n), node: n}))
		return
	case t == durationType:
		d.decodeDuration(n, v, path)
		return
	}
	switch t.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(t.Elem()))
		}
		d.decode(n, v.Elem(), path, entry)
	case reflect.Struct:
		entries, ok := mappingOf(n)
		if !ok {
			d.errorf(d.pos(n), "%s: expected a mapping, got %s", label(path), describe(n))
			return
		}
		d.decodeEntries(entries, v, path, entry)
	case reflect.Slice:
		d.decodeSlice(n, v, path)
	case reflect.Map:
		d.decodeMap(n, v, path)
	default:
		d.decodeScalar(n, v, path)
	}
}

// decodeDuration decodes a quoted or plain string such as 10m; a number is
// refused, since its unit would be a guess.
func (d *decoder) decodeDuration(n ast.Node, v reflect.Value, path string) {
	s, ok := scalarText(n)
	dur, err := time.ParseDuration(s)
	if _, isStr := n.(*ast.StringNode); !ok || !isStr || err != nil {
		d.errorf(d.pos(n), "%s: expected a duration such as 10m or 1h30m, got %s", label(path), describe(n))
		return
	}
	v.SetInt(int64(dur))
}

func (d *decoder) decodeSlice(n ast.Node, v reflect.Value, path string) {
	seq, ok := n.(*ast.SequenceNode)
	if !ok {
		d.errorf(d.pos(n), "%s: expected a list, got %s", label(path), describe(n))
		return
	}
	out := reflect.MakeSlice(v.Type(), len(seq.Values), len(seq.Values))
	for i, item := range seq.Values {
		d.decode(item, out.Index(i), fmt.Sprintf("%s[%d]", path, i), d.pos(item))
	}
	v.Set(out)
}

// decodeMap decodes a mapping into a map with string keys, refusing
// duplicate keys.
func (d *decoder) decodeMap(n ast.Node, v reflect.Value, path string) {
	t := v.Type()
	if t.Key().Kind() != reflect.String {
		d.errorf(d.pos(n), "%s: unsupported map key type %s", label(path), t.Key())
		return
	}
	entries, ok := mappingOf(n)
	if !ok {
		d.errorf(d.pos(n), "%s: expected a mapping, got %s", label(path), describe(n))
		return
	}
	out := reflect.MakeMapWithSize(t, len(entries))
	seen := make(map[string]Pos, len(entries))
	for _, e := range entries {
		key, kp, ok := d.key(e, path, seen)
		if !ok {
			continue
		}
		elem := reflect.New(t.Elem()).Elem()
		d.decode(e.Value, elem, join(path, key), kp)
		out.SetMapIndex(reflect.ValueOf(key).Convert(t.Key()), elem)
	}
	v.Set(out)
}

// decodeScalar decodes a string, a bool or a number; each accepts only
// its own YAML type, so `true` is not a string and "1" is not a number.
func (d *decoder) decodeScalar(n ast.Node, v reflect.Value, path string) {
	switch v.Kind() {
	case reflect.String:
		s, ok := scalarText(n)
		if !ok {
			d.errorf(d.pos(n), "%s: expected a string, got %s", label(path), describe(n))
			return
		}
		v.SetString(s)
	case reflect.Bool:
		b, ok := n.(*ast.BoolNode)
		if !ok {
			d.errorf(d.pos(n), "%s: expected true or false, got %s", label(path), describe(n))
			return
		}
		v.SetBool(b.Value)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		d.decodeInt(n, v, path)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		d.decodeUint(n, v, path)
	case reflect.Float32, reflect.Float64:
		d.decodeFloat(n, v, path)
	default:
		d.errorf(d.pos(n), "%s: unsupported field type %s", label(path), v.Type())
	}
}

func (d *decoder) decodeInt(n ast.Node, v reflect.Value, path string) {
	in, ok := n.(*ast.IntegerNode)
	var i int64
	switch x := valueOf(in, ok).(type) {
	case int64:
		i = x
	case uint64:
		if x > math.MaxInt64 {
			ok = false
		}
		i = int64(x)
	default:
		ok = false
	}
	if !ok || v.OverflowInt(i) {
		d.errorf(d.pos(n), "%s: expected an integer, got %s", label(path), describe(n))
		return
	}
	v.SetInt(i)
}

func (d *decoder) decodeUint(n ast.Node, v reflect.Value, path string) {
	in, ok := n.(*ast.IntegerNode)
	var u uint64
	switch x := valueOf(in, ok).(type) {
	case int64:
		if x < 0 {
			ok = false
		}
		u = uint64(x)
	case uint64:
		u = x
	default:
		ok = false
	}
	if !ok || v.OverflowUint(u) {
		d.errorf(d.pos(n), "%s: expected a non-negative integer, got %s", label(path), describe(n))
		return
	}
	v.SetUint(u)
}

func (d *decoder) decodeFloat(n ast.Node, v reflect.Value, path string) {
	var f float64
	var err error
	switch n.(type) {
	case *ast.IntegerNode, *ast.FloatNode:
		f, err = strconv.ParseFloat(strings.ReplaceAll(n.GetToken().Value, "_", ""), 64)
	default:
		err = errors.New("not a number")
	}
	if err != nil || v.OverflowFloat(f) {
		d.errorf(d.pos(n), "%s: expected a number, got %s", label(path), describe(n))
		return
	}
	v.SetFloat(f)
}

func valueOf(in *ast.IntegerNode, ok bool) any {
	if !ok || in == nil {
		return nil
	}
	return in.Value
}

// key validates a mapping entry's key and records it in seen, reporting
// duplicates at the second occurrence.
func (d *decoder) key(e *ast.MappingValueNode, path string, seen map[string]Pos) (string, Pos, bool) {
	kp := d.pos(e.Key)
	if !d.plain(e.Key, path) {
		return "", kp, false
	}
	var kn ast.Node = e.Key
	if mk, ok := kn.(*ast.MappingKeyNode); ok {
		kn = mk.Value
	}
	key, ok := scalarText(kn)
	if !ok {
		d.errorf(kp, "%s: keys must be strings, got %s", label(path), describe(kn))
		return "", kp, false
	}
	if first, dup := seen[key]; dup {
		d.errorf(kp, "%s: duplicate key %q (first defined at line %d)", label(path), key, first.Line)
		return "", kp, false
	}
	seen[key] = kp
	return key, kp, true
}

func (d *decoder) decodeEntries(entries []*ast.MappingValueNode, v reflect.Value, path string, entry Pos) {
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		d.errorf(entry, "%s: cannot decode a mapping into %s", label(path), v.Type())
		return
	}
	info := structInfoOf(v.Type())
	for _, idx := range info.selfPos {
		v.FieldByIndex(idx).Set(reflect.ValueOf(entry))
	}
	seen := make(map[string]Pos, len(entries))
	var rest []*ast.MappingValueNode
	for _, e := range entries {
		key, kp, ok := d.key(e, path, seen)
		if !ok {
			continue
		}
		idx, known := info.fields[key]
		if !known {
			if info.remain != nil {
				rest = append(rest, e)
				continue
			}
			allowed := "allowed: " + strings.Join(info.keys, ", ")
			if len(info.keys) == 0 {
				allowed = "no other keys are allowed here"
			}
			if path == "" {
				d.errorf(kp, "unknown key %q; %s", key, allowed)
			} else {
				d.errorf(kp, "unknown key %q in %s; %s", key, path, allowed)
			}
			continue
		}
		d.decode(e.Value, v.FieldByIndex(idx), join(path, key), kp)
		if pidx, ok := info.keyPos[key]; ok {
			d.setKeyPos(v.FieldByIndex(pidx), e.Value)
		}
	}
	if info.remain != nil {
		v.FieldByIndex(info.remain).Set(reflect.ValueOf(Raw{
			file: d.file, path: path, pos: entry, entries: rest, mapping: true,
		}))
	}
}

// setKeyPos fills a `yaml:"key,pos"` field: a Pos gets where the value
// starts, a []Pos where each list item starts, a map[string]Pos where each
// mapping value's key is.
func (d *decoder) setKeyPos(f reflect.Value, n ast.Node) {
	switch f.Type() {
	case posType:
		f.Set(reflect.ValueOf(d.pos(n)))
	case reflect.TypeOf([]Pos(nil)):
		seq, ok := n.(*ast.SequenceNode)
		if !ok {
			return
		}
		ps := make([]Pos, len(seq.Values))
		for i, item := range seq.Values {
			ps[i] = d.pos(item)
		}
		f.Set(reflect.ValueOf(ps))
	case reflect.TypeOf(map[string]Pos(nil)):
		entries, ok := mappingOf(n)
		if !ok {
			return
		}
		ps := make(map[string]Pos, len(entries))
		for _, e := range entries {
			if k, ok := scalarText(e.Key); ok {
				if _, dup := ps[k]; !dup {
					ps[k] = d.pos(e.Value)
				}
			}
		}
		f.Set(reflect.ValueOf(ps))
	}
}

type structInfo struct {
	fields  map[string][]int // key → field index
	keys    []string         // allowed keys in declaration order
	selfPos [][]int          // `yaml:",pos"` fields
	keyPos  map[string][]int // `yaml:"key,pos"` fields
	remain  []int            // `yaml:",remain"` field
}

var structInfos sync.Map // reflect.Type → *structInfo

func structInfoOf(t reflect.Type) *structInfo {
	if si, ok := structInfos.Load(t); ok {
		return si.(*structInfo)
	}
	si := &structInfo{fields: map[string][]int{}, keyPos: map[string][]int{}}
	collectFields(t, nil, si)
	structInfos.Store(t, si)
	return si
}

func collectFields(t reflect.Type, prefix []int, si *structInfo) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag, hasTag := f.Tag.Lookup("yaml")
		if tag == "-" || (!f.IsExported() && !f.Anonymous) {
			continue
		}
		idx := append(append([]int(nil), prefix...), i)
		name, opts, _ := strings.Cut(tag, ",")
		switch {
		case opts == "inline" && f.Type.Kind() == reflect.Struct:
			collectFields(f.Type, idx, si)
			continue
		case opts == "pos":
			if name == "" {
				si.selfPos = append(si.selfPos, idx)
			} else {
				si.keyPos[name] = idx
			}
			continue
		case opts == "remain" && f.Type == rawType:
			si.remain = idx
			continue
		}
		if !hasTag || name == "" {
			// Untagged fields are not part of the file format; being explicit
			// keeps a Go rename from silently changing the config schema.
			continue
		}
		if _, dup := si.fields[name]; !dup {
			si.keys = append(si.keys, name)
		}
		si.fields[name] = idx
	}
}
