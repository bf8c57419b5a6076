package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/latchbroker/latch/broker/api"
)

// Reasons of a malformed request: stable codes, sent in the error's
// reasons and recorded in the rejected audit event.
const (
	reasonEmptyBody    = "empty_body"
	reasonTooLarge     = "too_large"
	reasonContentType  = "content_type"
	reasonInvalidUTF8  = "invalid_utf8"
	reasonMalformed    = "malformed_json"
	reasonNotObject    = "not_an_object"
	reasonDuplicateKey = "duplicate_key"
	reasonUnknownField = "unknown_field"
	reasonTrailingData = "trailing_data"
	reasonTooDeep      = "too_deep"
	reasonWrongType    = "wrong_type"
	reasonInvalidField = "invalid_field"
	reasonBadQuery     = "bad_query"
	reasonBadPath      = "bad_path"
	reasonUnexpected   = "unexpected_body"
	reasonBadTrace     = "bad_trace_context"
)

// maxDepth bounds the nesting of a request body. Requests are an object
// with at most one level of maps below it.
const maxDepth = 8

// badRequest is a malformed request: answered with 400 (413 for a body
// over the limit) and recorded as a rejected audit event, nothing else.
type badRequest struct {
	code    string // api.CodeInvalid or api.CodeTooLarge
	reason  string // one of the reason* codes
	message string // for the caller; names the problem
}

func (e *badRequest) Error() string { return e.message }

func invalid(reason, format string, args ...any) *badRequest {
	return &badRequest{code: api.CodeInvalid, reason: reason, message: fmt.Sprintf(format, args...)}
}

// validator is implemented by the api request types.
type validator interface{ Validate() error }

// readBody reads a request body of at most max bytes. It returns nil for
// an empty body.
func readBody(w http.ResponseWriter, r *http.Request, max int64) ([]byte, *badRequest) {
	tooLarge := &badRequest{code: api.CodeTooLarge, reason: reasonTooLarge,
		message: fmt.Sprintf("request body is larger than %d bytes", max)}
	if r.ContentLength > max {
		return nil, tooLarge
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, max))
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return nil, tooLarge
	case err != nil:
		return nil, invalid(reasonMalformed, "could not read the request body: %v", err)
	}
	return body, nil
}

// checkContentType accepts application/json, with charset utf-8 if any.
func checkContentType(r *http.Request) *badRequest {
	ct := r.Header.Get("Content-Type")
	if ct == "" {
		return invalid(reasonContentType, "Content-Type is missing: send application/json")
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || mt != "application/json" {
		return invalid(reasonContentType, "Content-Type is %q: send application/json", truncate(ct, 64))
	}
	for k, v := range params {
		if k != "charset" || !strings.EqualFold(v, "utf-8") {
			return invalid(reasonContentType, "Content-Type parameter %s=%s is not accepted: send application/json (charset utf-8)", truncate(k, 32), truncate(v, 32))
		}
	}
	return nil
}

// decodeJSON decodes body into v, which must point to a struct, strictly:
// one JSON object, valid UTF-8, no duplicate keys, no field v does not
// declare (compared case-sensitively, unlike encoding/json), nothing after
// the object, values of the declared types. Then v.Validate runs, if v
// has it. Errors name the problem.
func decodeJSON(body []byte, v any) *badRequest {
	if len(bytes.TrimSpace(body)) == 0 {
		return invalid(reasonEmptyBody, "request body is empty: send a JSON object")
	}
	if !utf8.Valid(body) {
		return invalid(reasonInvalidUTF8, "request body is not valid UTF-8")
	}
	if bad := scanJSON(body, fieldNames(v)); bad != nil {
		return bad
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return decodeError(err)
	}
	if val, ok := v.(validator); ok {
		if err := val.Validate(); err != nil {
			return invalid(reasonInvalidField, "%s", err.Error())
		}
	}
	return nil
}

// scanJSON walks the tokens of body: it finds syntax errors, a top level
// that is not an object, duplicate keys at any level, top-level keys not
// in fields, nesting deeper than maxDepth and data after the object.
func scanJSON(body []byte, fields map[string]bool) *badRequest {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var stack []*frame
	var key string // the key whose value comes next
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			if len(stack) > 0 {
				return invalid(reasonMalformed, "malformed JSON: the body ends inside an object or array")
			}
			return invalid(reasonEmptyBody, "request body is empty: send a JSON object")
		}
		if err != nil {
			return syntaxError(err, dec.InputOffset())
		}
		top := (*frame)(nil)
		if n := len(stack); n > 0 {
			top = stack[n-1]
		}
		if top == nil {
			if d, ok := tok.(json.Delim); !ok || d != '{' {
				return invalid(reasonNotObject, "request body must be a JSON object, not %s", describe(tok))
			}
		}
		// A key of an object.
		if top != nil && top.object && top.expectKey {
			if d, ok := tok.(json.Delim); ok && d == '}' {
				stack = stack[:len(stack)-1]
				if done := endValue(stack); done {
					return trailing(dec)
				}
				continue
			}
			k := tok.(string) // the decoder allows nothing else here
			if top.keys[k] {
				return invalid(reasonDuplicateKey, "duplicate key %q%s: each key may appear once", truncate(k, 64), where(top.path))
			}
			top.keys[k] = true
			if len(stack) == 1 && !fields[k] {
				return invalid(reasonUnknownField, "unknown field %q%s", truncate(k, 64), known(fields))
			}
			top.expectKey = false
			key = k
			continue
		}
		// A value (or the end of an array).
		path := ""
		if top != nil {
			if top.object {
				path = join(top.path, key)
			} else {
				path = top.path + "[]"
			}
		}
		switch d, _ := tok.(json.Delim); d {
		case '{', '[':
			if len(stack) >= maxDepth {
				return invalid(reasonTooDeep, "request body is nested more than %d levels deep", maxDepth)
			}
			stack = append(stack, &frame{object: d == '{', expectKey: d == '{', keys: map[string]bool{}, path: path})
			continue
		case ']':
			stack = stack[:len(stack)-1]
		}
		if endValue(stack) {
			return trailing(dec)
		}
	}
}

// endValue marks the end of a value in the innermost container and
// reports whether the top-level object is complete.
func endValue(stack []*frame) bool {
	if len(stack) == 0 {
		return true
	}
	if top := stack[len(stack)-1]; top.object {
		top.expectKey = true
	}
	return false
}

// frame is an object or array being scanned.
type frame struct {
	object    bool
	expectKey bool // in an object: a key comes next
	keys      map[string]bool
	path      string // dotted path from the top, for messages
}

// trailing checks that nothing but white space follows the object.
func trailing(dec *json.Decoder) *badRequest {
	off := dec.InputOffset()
	if _, err := dec.Token(); err != io.EOF {
		return invalid(reasonTrailingData, "trailing data after the JSON object at byte %d: send exactly one object", off)
	}
	return nil
}

func syntaxError(err error, off int64) *badRequest {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return invalid(reasonMalformed, "malformed JSON at byte %d: %s", se.Offset, strings.TrimPrefix(se.Error(), "json: "))
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return invalid(reasonMalformed, "malformed JSON: the body ends at byte %d in the middle of a value", off)
	}
	return invalid(reasonMalformed, "malformed JSON at byte %d: %s", off, strings.TrimPrefix(err.Error(), "json: "))
}

// decodeError names what encoding/json refused after the scan passed.
func decodeError(err error) *badRequest {
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &te):
		field := te.Field
		if field == "" {
			field = "(body)"
		}
		return invalid(reasonWrongType, "field %q: want %s, got JSON %s", field, typeName(te.Type), te.Value)
	case errors.Is(err, api.ErrDurationFormat):
		return invalid(reasonWrongType, "field \"ttl\": %s", api.ErrDurationFormat)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return invalid(reasonUnknownField, "unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
	}
	return invalid(reasonMalformed, "malformed JSON: %s", strings.TrimPrefix(err.Error(), "json: "))
}

func typeName(t reflect.Type) string {
	if t == nil {
		return "a value"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Map, reflect.Struct:
		return "an object"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Pointer:
		return typeName(t.Elem())
	}
	return t.String()
}

func describe(tok json.Token) string {
	switch v := tok.(type) {
	case json.Delim:
		if v == '[' {
			return "an array"
		}
		return "a " + string(v)
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	case nil:
		return "null"
	}
	return "that"
}

func where(path string) string {
	if path == "" {
		return ""
	}
	return " in " + strconv.Quote(path)
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func known(fields map[string]bool) string {
	names := make([]string, 0, len(fields))
	for f := range fields {
		names = append(names, f)
	}
	if len(names) == 0 {
		return ": this endpoint takes an empty object"
	}
	slices.Sort(names)
	return "; known fields: " + strings.Join(names, ", ")
}

// fieldNames returns the JSON names of the fields of the struct v points
// to, cached per type.
func fieldNames(v any) map[string]bool {
	t := reflect.TypeOf(v)
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if f, ok := fieldCache.Load(t); ok {
		return f.(map[string]bool)
	}
	names := map[string]bool{}
	if t != nil && t.Kind() == reflect.Struct {
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			switch name {
			case "-":
				continue
			case "":
				name = f.Name
			}
			names[name] = true
		}
	}
	fieldCache.Store(t, names)
	return names
}

var fieldCache sync.Map // reflect.Type → map[string]bool

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
