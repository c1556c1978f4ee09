package gateway

import (
	"context"

	"github.com/sluice-gw/sluice/ingress"
	"github.com/sluice-gw/sluice/tracing"
	"github.com/sluice-gw/sluice/workers"
)

var _ workers.Tracer = (*tracing.Tracer)(nil)

// acceptTracer is tracing.Tracer as ingress.Tracer: the interface returns
// ingress's own span type.
type acceptTracer struct{ t *tracing.Tracer }

var _ ingress.Tracer = acceptTracer{}

func (a acceptTracer) Accept(method, route, path, backend, traceparent, tracestate string) ingress.AcceptSpan {
	return a.t.Accept(method, route, path, backend, traceparent, tracestate)
}

// startTracing starts tracing when the config asks for it and makes the
// ingress and the pools trace through it; nil when it is off.
func (g *Gateway) startTracing(p *parts) error {
	tr, err := tracing.Start(g.cfg.Tracing, tracing.Options{Version: g.version, Log: g.log})
	if err != nil || tr == nil {
		return err
	}
	p.tracing = tr
	p.manager.SetTracer(tr)
	if p.ingress != nil {
		p.ingress.SetTracer(acceptTracer{tr})
	}
	endpoint, _ := tracing.TracesURL(g.cfg.Tracing.OTLPEndpoint)
	g.log.Info().Str("otlp_endpoint", endpoint).Float64("sample", *g.cfg.Tracing.Sample).Msg("tracing on")
	return nil
}

// flushTraces exports the spans still queued, within ctx and at most
// tracing.FlushTimeout, in the background, while the rest stops; the returned channel closes once it is
// done (at once with tracing off). Call it once the ingress and the
// workers have stopped: no span starts any more.
func (g *Gateway) flushTraces(ctx context.Context, p *parts) <-chan struct{} {
	done := make(chan struct{})
	if p.tracing == nil {
		close(done)
		return done
	}
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(ctx, tracing.FlushTimeout)
		defer cancel()
		if err := p.tracing.Shutdown(ctx); err != nil {
			g.log.Warn().Err(err).Msg("tracing: spans still queued at shutdown are dropped")
		}
	}()
	return done
}
