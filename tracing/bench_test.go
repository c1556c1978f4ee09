package tracing

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/rs/zerolog"

	"github.com/sluice-gw/sluice/config"
	"github.com/sluice-gw/sluice/job"
)

// benchTracer is a Tracer exporting to a collector in the process that
// reads and drops what it gets: the export's allocations count too.
func benchTracer(b *testing.B, sample float64) *Tracer {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	b.Cleanup(srv.Close)
	tr, err := Start(&config.Tracing{OTLPEndpoint: srv.URL, Sample: &sample}, Options{Log: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = tr.Shutdown(context.Background()) })
	return tr
}

// BenchmarkAccept is one accept span: started, carried, ended.
func BenchmarkAccept(b *testing.B) {
	for _, sample := range []float64{1, 0} {
		b.Run(map[float64]string{1: "recorded", 0: "sampled-out"}[sample], func(b *testing.B) {
			tr := benchTracer(b, sample)
			h := make([][2]string, 0, 4)
			b.ReportAllocs()
			for b.Loop() {
				a := tr.Accept("POST", "logs", "/v1/logs", "logstore", "", "")
				h = a.Carry(append(h[:0], [2]string{"Content-Type", "application/json"}))
				a.End("team-a", "AaIGbpZfRk2kauIas1DD_dSk", 202)
			}
		})
	}
}

// BenchmarkAttempt is one attempt span on an outgoing request that
// carries an accept span's traceparent.
func BenchmarkAttempt(b *testing.B) {
	for _, flags := range []string{"01", "00"} {
		b.Run(map[string]string{"01": "recorded", "00": "sampled-out"}[flags], func(b *testing.B) {
			tr := benchTracer(b, 1)
			hr := httptest.NewRequest("POST", "http://127.0.0.1:9001/ingest", nil)
			req := &job.Request{ID: "AaIGbpZfRk2kauIas1DD_dSk", Route: "logs", Backend: "logstore"}
			tp := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-" + flags
			b.ReportAllocs()
			for b.Loop() {
				hr.Header.Set("Traceparent", tp)
				tr.Attempt(hr, req, 2)(503, "")
			}
		})
	}
}
