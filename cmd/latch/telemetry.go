package main

import (
	"context"
	"fmt"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// spanBatchTimeout is how long a finished span may wait to be exported.
const spanBatchTimeout = time.Second

// startTracing exports latch's spans (evaluate, mint, commit, revoke) to
// the OTLP/HTTP endpoint of telemetry.otlp_endpoint, as service latch with
// replica; the returned func flushes and stops. Without an endpoint latch
// makes no spans.
func startTracing(ctx context.Context, endpoint, replica string) (func(context.Context) error, error) {
	if endpoint == "" {
		return func(context.Context) error { return nil }, nil
	}
	exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(endpoint))
	if err != nil {
		return nil, fmt.Errorf("telemetry.otlp_endpoint: %w", err)
	}
	res := resource.NewSchemaless(attribute.String("service.name", "latch"), attribute.String("service.version", version),
		attribute.String("service.instance.id", replica))
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp, sdktrace.WithBatchTimeout(spanBatchTimeout)), sdktrace.WithResource(res))
	otel.SetTracerProvider(tp)
	return tp.Shutdown, nil
}
