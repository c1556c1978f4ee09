package workers

import (
	"net/http"

	"github.com/sluice-gw/sluice/job"
)

// Tracer makes a span of each delivery attempt (package tracing does, with
// OpenTelemetry). The gateway sets one with Manager.SetTracer when tracing
// is on; without one an attempt does nothing for tracing. It is called
// from many deliveries at once.
type Tracer interface {
	// Attempt starts the span of attempt n of req, about to send hr. Its
	// parent is the trace context hr's headers carry (the accept span's,
	// which travelled with the request); it puts its own traceparent in
	// hr, so the backend's spans are its children. end ends the span with
	// the backend's status, or 0 and the category of the error (describe)
	// that kept an answer from coming.
	Attempt(hr *http.Request, req *job.Request, n int) (end func(status int, errCategory string))
}

// SetTracer makes every pool trace its attempts. Call it before Run.
func (m *Manager) SetTracer(t Tracer) {
	for _, p := range m.pools {
		p.tracer = t
	}
}

// traceAttempt starts the span of attempt n of req, sending hr; the
// returned func ends it with the attempt's result.
func (p *Pool) traceAttempt(hr *http.Request, req *job.Request, n int) func(*result) {
	end := p.tracer.Attempt(hr, req, n)
	return func(res *result) {
		category := ""
		if res.err != nil {
			category = describe(res.err)
		}
		end(res.status, category)
	}
}
