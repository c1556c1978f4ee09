package ingress

import (
	"bytes"

	"github.com/valyala/fasthttp"
)

// Tracer makes a span of each request to a route (package tracing does,
// with OpenTelemetry). The gateway sets one with SetTracer when tracing is
// on; without one a request does nothing for tracing. It is called from
// many handlers at once.
type Tracer interface {
	// Accept starts the span of a request to a route. traceparent and
	// tracestate are the client's headers ("" when absent; several lines
	// joined with commas): its parent.
	Accept(method, route, path, backend, traceparent, tracestate string) AcceptSpan
}

// AcceptSpan is the span of one request to a route.
type AcceptSpan interface {
	// Carry returns the headers for the backend (it may reuse header)
	// with the span's traceparent and tracestate in place of the
	// client's: the trace context that travels with the request through
	// the queue to each attempt.
	Carry(header [][2]string) [][2]string
	// End ends the span with the answer: its status, the client, and the
	// request id when one was given.
	End(client, id string, status int)
}

// SetTracer makes a span of every request to a route. Call it before
// Serve.
func (s *Server) SetTracer(t Tracer) { s.tracer = t }

// startSpan starts the span of a request to r.
func (s *Server) startSpan(ctx *fasthttp.RequestCtx, r *route) AcceptSpan {
	h := &ctx.Request.Header
	return s.tracer.Accept(string(ctx.Method()), r.cfg.Name, r.cfg.Path, r.backend.Name,
		headerList(h, "traceparent"), headerList(h, "tracestate"))
}

// endSpan ends span with the answer in ctx.
func endSpan(span AcceptSpan, ctx *fasthttp.RequestCtx, client string) {
	span.End(client, string(ctx.Response.Header.Peek("X-Request-Id")), ctx.Response.StatusCode())
}

// headerList is every line of header name joined with commas: two
// traceparent lines make one invalid value (W3C Trace Context), and
// tracestate lines are one list.
func headerList(h *fasthttp.RequestHeader, name string) string {
	all := h.PeekAll(name)
	switch len(all) {
	case 0:
		return ""
	case 1:
		return string(all[0])
	}
	return string(bytes.Join(all, []byte(",")))
}
