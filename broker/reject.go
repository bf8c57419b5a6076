package broker

import (
	"context"
	"strings"
	"unicode"

	"github.com/latchbroker/latch/templates"
)

// Refusal is a request the HTTP layer refused before the Service decided
// anything: a malformed body, a credential that did not verify, an
// identity without the role an endpoint needs.
type Refusal struct {
	// Actor is the caller's verified identity (a SPIFFE ID or
	// "admin-socket"); empty when the caller could not be identified.
	// Never a claim that did not verify.
	Actor string
	// Endpoint is the route, such as "POST /v1/credentials".
	Endpoint string
	// Reason is a short, stable code (unknown_field, too_large, expired,
	// missing_role, ...): it becomes the event's reason and a metric label.
	Reason string
	// Message is the text the caller was sent, safe to store.
	Message string
	// Remote is the caller's network address.
	Remote string
}

// Limits on what a refusal writes to the audit log, which a caller must
// not be able to flood with its own text.
const (
	maxRefusalField   = 256
	maxRefusalMessage = 512
)

// Reject records a malformed request — unknown field, trailing data,
// oversized body, wrong content type, bad value — as a rejected audit
// event, and nothing else. Errors: EUNAVAILABLE.
func (s Audit) Reject(ctx context.Context, r Refusal) error {
	return s.auditRefusal(ctx, r.event(EventRejected, "rejected"))
}

// ToolCall records a tool call that an agent's MCP server (latch mcp)
// reports before it acts on it: which agent, which MCP client (as the
// client named itself), which tool and task, and the call's trace ID.
// Only a registered agent may report; its rate limit counts the calls.
// Errors: EFORBIDDEN for an unknown agent, ELIMIT, EUNAVAILABLE.
func (s Audit) ToolCall(ctx context.Context, agent, client, tool, task, traceID string) error {
	if _, ok := s.policy.Load().Agent(agent); !ok {
		return forbidden(string(templates.ReasonUnknownAgent), agent+" is not a registered agent")
	}
	if err := s.checkRate(agent); err != nil {
		return err
	}
	ev := Event{Type: EventToolCall, Actor: agent, Task: clean(task, maxRefusalField), Outcome: "called",
		Details: map[string]string{"client": clean(client, maxRefusalField), "tool": clean(tool, maxRefusalField)}}
	if traceID != "" {
		ev.Details["trace_id"] = traceID
	}
	_, err := s.apply(ctx, Change{Events: []Event{ev}})
	return err
}

// Violation records a refusal that points at misuse — a credential that
// did not verify, an identity calling an endpoint its roles do not allow
// — as a violation audit event, and counts it in Metrics.Violation by
// reason. Errors: EUNAVAILABLE.
func (s Audit) Violation(ctx context.Context, r Refusal) error {
	s.metrics.Violation(clean(r.Reason, maxRefusalField))
	return s.auditRefusal(ctx, r.event(EventViolation, "refused"))
}

func (r Refusal) event(typ EventType, outcome string) Event {
	ev := Event{
		Type:    typ,
		Actor:   clean(r.Actor, maxRefusalField),
		Outcome: outcome,
		Details: map[string]string{},
	}
	if r.Reason != "" {
		ev.Reasons = []string{clean(r.Reason, maxRefusalField)}
	}
	for k, v := range map[string]string{
		"endpoint": clean(r.Endpoint, maxRefusalField),
		"message":  clean(r.Message, maxRefusalMessage),
		"remote":   clean(r.Remote, maxRefusalField),
	} {
		if v != "" {
			ev.Details[k] = v
		}
	}
	return ev
}

// clean bounds s to n bytes (on a rune boundary) and replaces control
// characters, so a caller's text cannot forge lines in a log or a terminal.
func clean(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == unicode.ReplacementChar {
			return '?'
		}
		return r
	}, strings.ToValidUTF8(s, "?"))
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !isRuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

func isRuneStart(b byte) bool { return b&0xC0 != 0x80 }
