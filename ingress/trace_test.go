package ingress

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/config"
	"github.com/sluice-gw/sluice/tracing"
	"github.com/sluice-gw/sluice/wire"
)

// fakeTracer records the spans ingress starts.
type fakeTracer struct {
	mu    sync.Mutex
	spans []*fakeSpan
}

var (
	_ Tracer     = (*fakeTracer)(nil)
	_ AcceptSpan = (*fakeSpan)(nil)
)

type fakeSpan struct {
	method, route, path, backend, traceparent, tracestate string

	carried    int
	ended      bool
	client, id string
	status     int
}

func (f *fakeTracer) Accept(method, route, path, backend, traceparent, tracestate string) AcceptSpan {
	sp := &fakeSpan{method: method, route: route, path: path, backend: backend, traceparent: traceparent, tracestate: tracestate}
	f.mu.Lock()
	f.spans = append(f.spans, sp)
	f.mu.Unlock()
	return sp
}

func (f *fakeSpan) Carry(h [][2]string) [][2]string {
	f.carried++
	out := h[:0]
	for _, kv := range h {
		if !strings.EqualFold(kv[0], "traceparent") {
			out = append(out, kv)
		}
	}
	return append(out, [2]string{"traceparent", "00-sluice-accept"})
}

func (f *fakeSpan) End(client, id string, status int) {
	f.ended, f.client, f.id, f.status = true, client, id, status
}

func (f *fakeTracer) all() []*fakeSpan {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*fakeSpan(nil), f.spans...)
}

const clientParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// TestAcceptSpans: every request to a route gets a span, ended with its
// answer; an accepted one carries the span's traceparent in place of the
// client's to the queue. Polls, preflights and unrouted paths get none.
func TestAcceptSpans(t *testing.T) {
	var mu sync.Mutex
	var published []broker.Message
	s, _ := testServer(t, "durable", func(_ context.Context, _ string, m broker.Message) error {
		mu.Lock()
		published = append(published, m)
		mu.Unlock()
		return nil
	})
	tr := &fakeTracer{}
	s.SetTracer(tr)

	ctx := call(s, "POST", "/p/x?y=1", `{}`, map[string]string{"traceparent": clientParent, "Tracestate": "a=1", "X-Keep": "k"})
	if ctx.Response.StatusCode() != 202 {
		t.Fatalf("status %d %s", ctx.Response.StatusCode(), ctx.Response.Body())
	}
	id := string(ctx.Response.Header.Peek("X-Request-Id"))
	call(s, "POST", "/r", strings.Repeat("x", 65), nil) // 413
	call(s, "GET", "/r", "", nil)                       // 405
	call(s, "GET", "/v1/requests/"+id, "", nil)         // a poll
	call(s, "POST", "/nowhere", "", nil)                // 404

	spans := tr.all()
	if len(spans) != 3 {
		t.Fatalf("%d spans, want 3 (accepted, 413, 405)", len(spans))
	}
	a := spans[0]
	if a.method != "POST" || a.route != "p" || a.path != "/p/" || a.backend != "b" || a.traceparent != clientParent || a.tracestate != "a=1" {
		t.Fatalf("accept span started with %+v", a)
	}
	if !a.ended || a.status != 202 || a.id != id || a.client != "" || a.carried != 1 {
		t.Fatalf("accept span %+v, want ended 202 with id %s, carried once", a, id)
	}
	for i, want := range []int{413, 405} {
		if sp := spans[i+1]; !sp.ended || sp.status != want || sp.id != "" || sp.carried != 0 {
			t.Errorf("span %d: %+v, want ended %d without id or carry", i+1, sp, want)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(published) != 1 {
		t.Fatalf("%d published", len(published))
	}
	req, err := wire.DecodeRequest(published[0])
	if err != nil {
		t.Fatal(err)
	}
	var tps []string
	keep := false
	for _, kv := range req.Header {
		if strings.EqualFold(kv[0], "traceparent") {
			tps = append(tps, kv[1])
		}
		keep = keep || kv[0] == "X-Keep"
	}
	if len(tps) != 1 || tps[0] != "00-sluice-accept" || !keep {
		t.Fatalf("queued headers %v: want the span's traceparent alone, and the others kept", req.Header)
	}
}

// TestTracingOffPassesTraceparent: without a tracer the client's
// traceparent and tracestate travel as they came.
func TestTracingOffPassesTraceparent(t *testing.T) {
	var got broker.Message
	s, _ := testServer(t, "durable", func(_ context.Context, _ string, m broker.Message) error { got = m; return nil })
	if ctx := call(s, "POST", "/r", "{}", map[string]string{"traceparent": clientParent, "tracestate": "a=1"}); ctx.Response.StatusCode() != 202 {
		t.Fatalf("status %d", ctx.Response.StatusCode())
	}
	req, err := wire.DecodeRequest(got)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"Traceparent": clientParent, "Tracestate": "a=1"}
	for _, kv := range req.Header {
		if v, ok := want[kv[0]]; ok && v == kv[1] {
			delete(want, kv[0])
		}
	}
	if len(want) > 0 {
		t.Fatalf("headers %v lack %v", req.Header, want)
	}
}

// TestTraceHeaderLines: two traceparent lines reach the tracer as one
// comma-joined (invalid) value; tracestate lines as one list.
func TestTraceHeaderLines(t *testing.T) {
	s, _ := testServer(t, "durable", func(context.Context, string, broker.Message) error { return nil })
	tr := &fakeTracer{}
	s.SetTracer(tr)
	var ctx fasthttp.RequestCtx
	ctx.Request.Header.SetMethod("POST")
	ctx.Request.SetRequestURI("/r")
	ctx.Request.Header.Add("traceparent", clientParent)
	ctx.Request.Header.Add("Traceparent", clientParent)
	ctx.Request.Header.Add("tracestate", "a=1")
	ctx.Request.Header.Add("tracestate", "b=2")
	s.handle(&ctx)
	sp := tr.all()[0]
	if sp.traceparent != clientParent+","+clientParent || sp.tracestate != "a=1,b=2" {
		t.Fatalf("tracer got traceparent %q, tracestate %q", sp.traceparent, sp.tracestate)
	}
}

// BenchmarkSubmitTracing is BenchmarkSubmit without tracing, with every
// trace recorded (and exported, to a collector in the process that reads
// and drops it: the export's allocations count too), with tracing on but
// no trace sampled, and with a client traceparent whose trace is recorded.
func BenchmarkSubmitTracing(b *testing.B) {
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	defer rcv.Close()
	for _, tc := range []struct {
		name        string
		sample      float64 // <0: off
		traceparent string
	}{{"off", -1, ""}, {"on", 1, ""}, {"sampled-out", 0, ""}, {"on-client-parent", 1, clientParent}} {
		b.Run(tc.name, func(b *testing.B) {
			s, _ := testServer(b, "durable", func(context.Context, string, broker.Message) error { return nil })
			if tc.sample >= 0 {
				tr, err := tracing.Start(&config.Tracing{OTLPEndpoint: rcv.URL, Sample: &tc.sample}, tracing.Options{Log: zerolog.Nop()})
				if err != nil {
					b.Fatal(err)
				}
				defer tr.Shutdown(context.Background())
				s.SetTracer(acceptTracer{tr})
			}
			body := string(make([]byte, 60))
			hdr := map[string]string{"Content-Type": "application/json"}
			if tc.traceparent != "" {
				hdr["traceparent"] = tc.traceparent
			}
			b.ReportAllocs()
			for b.Loop() {
				ctx := call(s, "POST", "/r?x=1", body, hdr)
				if ctx.Response.StatusCode() != 202 {
					b.Fatal(ctx.Response.StatusCode())
				}
			}
		})
	}
}

// acceptTracer is the gateway's adapter, for the benchmark.
type acceptTracer struct{ t *tracing.Tracer }

func (a acceptTracer) Accept(method, route, path, backend, tp, ts string) AcceptSpan {
	return a.t.Accept(method, route, path, backend, tp, ts)
}
