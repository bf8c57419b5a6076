package api

import (
	"fmt"
	"net/url"
	"strings"
)

// W3C Trace Context headers (https://www.w3.org/TR/trace-context/): an
// agent's own trace, which latch records with the request.
const (
	HeaderTraceparent = "traceparent"
	HeaderTracestate  = "tracestate"
	// MaxTracestate bounds tracestate, as the recommendation does (512).
	MaxTracestate = 512
)

// TraceContext is a parsed traceparent.
type TraceContext struct {
	TraceID  string // 32 lower-case hex digits, not all zero
	ParentID string // 16 lower-case hex digits, not all zero: the caller's span
	Flags    string // 2 hex digits; 01 is sampled
}

// ParseTraceparent parses a traceparent header of version 00 (and, as
// the recommendation asks, the first four fields of a later version).
func ParseTraceparent(s string) (TraceContext, error) {
	parts := strings.Split(s, "-")
	if len(parts) < 4 {
		return TraceContext{}, fmt.Errorf("traceparent %q: want version-traceid-parentid-flags", clipTrace(s))
	}
	version, tc := parts[0], TraceContext{TraceID: parts[1], ParentID: parts[2], Flags: parts[3]}
	switch {
	case !lowerHex(version, 2) || version == "ff":
		return TraceContext{}, fmt.Errorf("traceparent %q: bad version", clipTrace(s))
	case version == "00" && len(parts) != 4:
		return TraceContext{}, fmt.Errorf("traceparent %q: version 00 has four fields", clipTrace(s))
	case !lowerHex(tc.TraceID, 32) || tc.TraceID == strings.Repeat("0", 32):
		return TraceContext{}, fmt.Errorf("traceparent %q: the trace ID must be 32 lower-case hex digits, not all zero", clipTrace(s))
	case !lowerHex(tc.ParentID, 16) || tc.ParentID == strings.Repeat("0", 16):
		return TraceContext{}, fmt.Errorf("traceparent %q: the parent ID must be 16 lower-case hex digits, not all zero", clipTrace(s))
	case !lowerHex(tc.Flags, 2):
		return TraceContext{}, fmt.Errorf("traceparent %q: the flags must be 2 hex digits", clipTrace(s))
	}
	return tc, nil
}

// String is the traceparent header of tc (version 00).
func (tc TraceContext) String() string {
	return "00-" + tc.TraceID + "-" + tc.ParentID + "-" + tc.Flags
}

func lowerHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// clipTrace keeps enough of a header for a message: quoted (%q), even
// 40 bytes of control characters stay short.
func clipTrace(s string) string {
	if len(s) > 40 {
		return strings.ToValidUTF8(s[:40], "") + "…"
	}
	return s
}

// TraceLink fills a trace link template, such as
// "https://jaeger.example.org/trace/{trace_id}", with a trace ID; "" when
// either is empty. The ID is path-escaped: a stored trace_id is the
// agent's to choose.
func TraceLink(template, traceID string) string {
	if template == "" || traceID == "" {
		return ""
	}
	return strings.ReplaceAll(template, "{trace_id}", url.PathEscape(traceID))
}
