package tracing

import (
	"context"
	"sync"
	"time"

	"github.com/rs/zerolog"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// logEvery spaces the warnings about spans the collector did not take.
const logEvery = time.Minute

// exporter wraps the OTLP exporter: it logs failed exports to sluice's log
// (at most once a minute, with how many spans were lost meanwhile) instead
// of OpenTelemetry's global error handler, and abort cuts every export
// under way and to come short, so a shutdown's last export ends when the
// shutdown's time does.
type exporter struct {
	next sdktrace.SpanExporter
	log  zerolog.Logger

	stopped context.Context
	abort   context.CancelFunc

	mu      sync.Mutex
	lastLog time.Time
	lost    int // spans lost since the last warning
}

func newExporter(next sdktrace.SpanExporter, log zerolog.Logger) *exporter {
	e := &exporter{next: next, log: log}
	e.stopped, e.abort = context.WithCancel(context.Background())
	return e
}

// ExportSpans exports spans; a failure is logged, not returned: the batch
// processor would only hand it to the global error handler.
func (e *exporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(e.stopped, cancel)
	defer stop()
	if err := e.next.ExportSpans(ctx, spans); err != nil {
		e.failed(len(spans), err)
	}
	return nil
}

func (e *exporter) failed(n int, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.lost += n
	if now := time.Now(); now.Sub(e.lastLog) >= logEvery {
		e.log.Warn().Err(err).Int("spans", e.lost).Msg("tracing: the collector did not take spans; they are dropped")
		e.lastLog, e.lost = now, 0
	}
}

// Shutdown shuts the OTLP exporter down; like ExportSpans it logs rather
// than returns its error.
func (e *exporter) Shutdown(ctx context.Context) error {
	if err := e.next.Shutdown(ctx); err != nil {
		e.log.Debug().Err(err).Msg("tracing: exporter shutdown")
	}
	return nil
}
