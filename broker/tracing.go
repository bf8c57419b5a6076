package broker

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// tracer makes the spans of evaluate, mint, commit and revoke: children
// of the agent's span when the request carried one (traceparent), and
// nothing at all unless latch exports spans (telemetry.otlp_endpoint
// sets the global provider). Attributes name the agent, task, lease,
// backend and outcome — never a secret, a parameter or a reason.
var tracer = otel.Tracer("github.com/latchbroker/latch/broker")

// Span attribute keys.
const (
	attrAgent   = attribute.Key("latch.agent")
	attrTask    = attribute.Key("latch.task")
	attrLease   = attribute.Key("latch.lease.id")
	attrBackend = attribute.Key("latch.backend")
	attrOutcome = attribute.Key("latch.outcome")
)

// startSpan starts a span of one stage; end it with endSpan.
func startSpan(ctx context.Context, name string, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	return tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindInternal), trace.WithAttributes(attrs...))
}

// endSpan ends span, marking it failed with err's code only: a message
// from Vault is not a span attribute's to carry.
func endSpan(span trace.Span, err error) {
	if err != nil {
		span.SetStatus(codes.Error, ErrorCode(err))
	}
	span.End()
}
