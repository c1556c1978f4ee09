// Package tracing records sluice's OpenTelemetry spans and exports them over
// OTLP/HTTP: a server span for each request to a route (the accept) and a
// client span for each delivery attempt, all of one request in one trace.
//
// The trace crosses the queue in the request's own forwarded headers: the
// accept span, a child of the client's traceparent when it sent one, puts
// its traceparent (and the client's tracestate) in place of the client's
// (AcceptSpan.Carry). Each attempt reads it back as its parent, whichever
// process and however much later it runs, and sends the backend its own
// traceparent, so the backend's spans are children of the attempt. Group
// commit packs requests, not traces: each request carries its own context.
//
// Ingress and workers know none of this: each defines the small interface
// it calls (ingress.Tracer, workers.Tracer) and calls it only when the
// gateway set one, so with tracing off nothing is done per request. No
// OpenTelemetry type leaves this package.
//
// Start builds the exporter and the batch span processor, whose goroutine
// runs until Shutdown; Shutdown flushes what is queued within its context
// and then cuts any export still under way short. An unreachable or slow
// collector never slows a request: spans are queued without blocking,
// dropped when the queue is full, and each export is bounded.
package tracing
