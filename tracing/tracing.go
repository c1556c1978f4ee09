package tracing

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/sluice-gw/sluice/config"
	"github.com/sluice-gw/sluice/job"
)

// Bounds of the export: one HTTP request to the collector, and one export
// with its retries. A collector that does not answer costs spans, never
// requests.
const (
	requestTimeout = 5 * time.Second
	exportTimeout  = 10 * time.Second
)

// FlushTimeout is the most a shutdown should wait for the collector to
// take the spans still queued: a collector that hangs must not hold every
// stop for the whole shutdown_timeout.
const FlushTimeout = 5 * time.Second

// Options are what Start needs beyond the config.
type Options struct {
	Version string // service.version
	Log     zerolog.Logger
}

// Tracer records the spans of accepts and delivery attempts. Its methods
// may be called from many goroutines at once. A nil *Tracer is tracing
// off: Shutdown does nothing.
type Tracer struct {
	provider *sdktrace.TracerProvider
	tracer   trace.Tracer
	exporter *exporter
	client   *http.Client
	log      zerolog.Logger
	once     sync.Once
}

// Start starts tracing as cfg says: nil, nil when cfg is nil (tracing
// off). The exporter sends nothing until the first spans end.
func Start(cfg *config.Tracing, opts Options) (*Tracer, error) {
	if cfg == nil {
		return nil, nil
	}
	endpoint, err := TracesURL(cfg.OTLPEndpoint)
	if err != nil {
		return nil, err
	}
	sample := 1.0
	if cfg.Sample != nil {
		sample = *cfg.Sample
	}
	// A client of its own, so Shutdown can close its idle connections.
	client := &http.Client{
		Timeout: requestTimeout,
		Transport: &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			MaxIdleConns:        4,
			IdleConnTimeout:     90 * time.Second,
			TLSHandshakeTimeout: requestTimeout,
		},
	}
	otlp, err := otlptracehttp.New(context.Background(),
		otlptracehttp.WithEndpointURL(endpoint),
		otlptracehttp.WithHTTPClient(client),
		otlptracehttp.WithRetry(otlptracehttp.RetryConfig{
			Enabled: true, InitialInterval: 500 * time.Millisecond, MaxInterval: 2 * time.Second, MaxElapsedTime: exportTimeout,
		}))
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	version := opts.Version
	if version == "" {
		version = "dev"
	}
	// OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME add to these, or
	// override them.
	res, err := resource.Merge(resource.NewSchemaless(
		attribute.String("service.name", "sluice"), attribute.String("service.version", version),
	), resource.Environment())
	if err != nil {
		return nil, fmt.Errorf("tracing: resource: %w", err)
	}
	exp := newExporter(otlp, opts.Log)
	provider := sdktrace.NewTracerProvider(
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(sample))),
		sdktrace.WithResource(res),
		// Queue and batch sizes and the delay take the OTEL_BSP_*
		// variables; the export bound is sluice's.
		sdktrace.WithBatcher(exp, sdktrace.WithExportTimeout(exportTimeout)),
	)
	return &Tracer{provider: provider, tracer: provider.Tracer("github.com/sluice-gw/sluice", trace.WithInstrumentationVersion(version)),
		exporter: exp, client: client, log: opts.Log}, nil
}

// TracesURL is where spans of the collector at endpoint go: its
// /v1/traces, unless endpoint names that path already.
func TracesURL(endpoint string) (string, error) {
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("tracing: otlp_endpoint %q is not an http(s) url", endpoint)
	}
	if !strings.HasSuffix(u.Path, "/v1/traces") {
		u.Path = strings.TrimSuffix(u.Path, "/") + "/v1/traces"
		u.RawPath = ""
	}
	return u.String(), nil
}

// Shutdown ends tracing: it exports the spans still queued until ctx
// ends, then cuts short any export under way, so nothing of it outlives
// ctx by more than a moment. Later calls do nothing.
func (t *Tracer) Shutdown(ctx context.Context) error {
	if t == nil {
		return nil
	}
	var err error
	t.once.Do(func() {
		stop := context.AfterFunc(ctx, t.exporter.abort)
		defer stop()
		err = t.provider.Shutdown(ctx)
		t.exporter.abort()
		t.client.CloseIdleConnections()
		if err != nil {
			err = fmt.Errorf("tracing: spans not flushed: %w", err)
		}
	})
	return err
}

// carrier holds the two W3C Trace Context headers.
type carrier struct{ traceparent, tracestate string }

func (c *carrier) Get(key string) string {
	switch key {
	case "traceparent":
		return c.traceparent
	case "tracestate":
		return c.tracestate
	}
	return ""
}

func (c *carrier) Set(key, value string) {
	switch key {
	case "traceparent":
		c.traceparent = value
	case "tracestate":
		c.tracestate = value
	}
}

func (c *carrier) Keys() []string { return []string{"traceparent", "tracestate"} }

var (
	w3c        propagation.TraceContext
	serverKind = trace.WithSpanKind(trace.SpanKindServer)
	clientKind = trace.WithSpanKind(trace.SpanKindClient)
)

// Accept starts the span of a request to a route: a server span named
// "<method> <route path>", whose parent is the client's traceparent
// (tracestate kept) when it is valid, or a new trace's root. traceparent
// and tracestate are the client's headers, "" when absent, several lines
// joined with commas (so two traceparent lines are an invalid one, as W3C
// Trace Context wants).
func (t *Tracer) Accept(method, route, path, backend, traceparent, tracestate string) *AcceptSpan {
	parent := context.Background()
	if traceparent != "" {
		parent = w3c.Extract(parent, &carrier{traceparent, tracestate})
	}
	ctx, span := t.tracer.Start(parent, method+" "+path, serverKind)
	if span.IsRecording() { // a trace not sampled costs no attributes
		span.SetAttributes(
			attribute.String("http.request.method", method),
			attribute.String("http.route", path),
			attribute.String("sluice.route", route),
			attribute.String("sluice.backend", backend),
		)
	}
	return &AcceptSpan{ctx: ctx, span: span}
}

// AcceptSpan is the span of one request to a route.
type AcceptSpan struct {
	ctx  context.Context
	span trace.Span
}

// Carry returns the backend's headers header (which it may reuse) with the
// span's traceparent and tracestate in place of any the client sent: the
// trace context that travels through the queue to every attempt.
func (a *AcceptSpan) Carry(header [][2]string) [][2]string {
	var c carrier
	w3c.Inject(a.ctx, &c)
	out := header[:0]
	for _, kv := range header {
		if !strings.EqualFold(kv[0], "traceparent") && !strings.EqualFold(kv[0], "tracestate") {
			out = append(out, kv)
		}
	}
	if c.traceparent != "" {
		out = append(out, [2]string{"traceparent", c.traceparent})
	}
	if c.tracestate != "" {
		out = append(out, [2]string{"tracestate", c.tracestate})
	}
	return out
}

// End ends the span with the answer: its status, the client ("" without
// auth) and the request id ("" when none was given). A 5xx marks it
// failed (OpenTelemetry's HTTP server conventions).
func (a *AcceptSpan) End(client, id string, status int) {
	if !a.span.IsRecording() {
		a.span.End()
		return
	}
	attrs := make([]attribute.KeyValue, 0, 4)
	attrs = append(attrs, attribute.Int("http.response.status_code", status))
	if client != "" {
		attrs = append(attrs, attribute.String("sluice.client", client))
	}
	if id != "" {
		attrs = append(attrs, attribute.String("sluice.request.id", id))
	}
	if status >= 500 {
		attrs = append(attrs, attribute.String("error.type", strconv.Itoa(status)))
		a.span.SetStatus(codes.Error, "")
	}
	a.span.SetAttributes(attrs...)
	a.span.End()
}

// headerCarrier reads and writes an outgoing request's trace headers:
// several lines of one header are one comma-separated list.
type headerCarrier http.Header

func (h headerCarrier) Get(key string) string { return strings.Join(h[canonical(key)], ",") }
func (h headerCarrier) Set(key, value string) { h[canonical(key)] = []string{value} }
func (h headerCarrier) Keys() []string        { return nil }

// canonical is http.CanonicalHeaderKey, without its allocation for the
// two names the propagator asks for.
func canonical(key string) string {
	switch key {
	case "traceparent":
		return "Traceparent"
	case "tracestate":
		return "Tracestate"
	}
	return http.CanonicalHeaderKey(key)
}

// noEnd ends a span that records nothing.
func noEnd(int, string) {}

// Attempt starts the span of attempt n of req, about to send hr: a client
// span whose parent is the trace context hr's headers carry (the accept
// span's, put there by Carry). It replaces hr's traceparent and
// tracestate with its own, so the backend's spans are its children. The
// returned end ends the span with the backend's status, or 0 and the
// category of the error that kept an answer from coming.
func (t *Tracer) Attempt(hr *http.Request, req *job.Request, n int) (end func(status int, errCategory string)) {
	parent := w3c.Extract(context.Background(), headerCarrier(hr.Header))
	ctx, span := t.tracer.Start(parent, hr.Method, clientKind)
	delete(hr.Header, "Traceparent")
	delete(hr.Header, "Tracestate")
	w3c.Inject(ctx, headerCarrier(hr.Header))
	if !span.IsRecording() {
		return noEnd // a span not recorded needs no End
	}
	attrs := make([]attribute.KeyValue, 0, 10)
	attrs = append(attrs,
		attribute.String("http.request.method", hr.Method),
		attribute.String("server.address", hr.URL.Hostname()),
		attribute.String("url.full", redacted(hr.URL)),
		attribute.String("sluice.route", req.Route),
		attribute.String("sluice.backend", req.Backend),
		attribute.String("sluice.request.id", req.ID),
		attribute.Int("sluice.attempt", n),
	)
	if port := hr.URL.Port(); port != "" {
		if p, err := strconv.Atoi(port); err == nil {
			attrs = append(attrs, attribute.Int("server.port", p))
		}
	}
	if n > 1 {
		attrs = append(attrs, attribute.Int("http.request.resend_count", n-1))
	}
	span.SetAttributes(attrs...)
	return func(status int, errCategory string) {
		switch {
		case errCategory != "":
			span.SetAttributes(attribute.String("error.type", errCategory))
			span.SetStatus(codes.Error, errCategory)
		case status >= 400: // OpenTelemetry's HTTP client conventions
			span.SetAttributes(attribute.String("error.type", strconv.Itoa(status)))
			span.SetStatus(codes.Error, "")
		}
		if status > 0 {
			span.SetAttributes(attribute.Int("http.response.status_code", status))
		}
		span.End()
	}
}

// redacted is u without credentials, query or fragment: the url an
// attempt went to, as far as a trace may show it.
func redacted(u *url.URL) string {
	r := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path, RawPath: u.RawPath}
	return r.String()
}
