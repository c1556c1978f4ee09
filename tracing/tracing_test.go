package tracing

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/sluice-gw/sluice/config"
	"github.com/sluice-gw/sluice/internal/stacks"
	"github.com/sluice-gw/sluice/job"
	"github.com/sluice-gw/sluice/tracing/tracingtest"
)

const (
	clientTrace  = "4bf92f3577b34da6a3ce929d0e0e4736"
	clientSpan   = "00f067aa0ba902b7"
	clientParent = "00-" + clientTrace + "-" + clientSpan + "-01"
)

func start(t *testing.T, endpoint string, sample float64) *Tracer {
	t.Helper()
	tr, err := Start(&config.Tracing{OTLPEndpoint: endpoint, Sample: &sample}, Options{Version: "test", Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Shutdown(context.Background()) })
	return tr
}

func shutdown(t *testing.T, tr *Tracer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := tr.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

// traceparent splits a traceparent into trace id, span id and flags.
func traceparent(t *testing.T, v string) (string, string, string) {
	t.Helper()
	p := strings.Split(v, "-")
	if len(p) != 4 || p[0] != "00" || len(p[1]) != 32 || len(p[2]) != 16 {
		t.Fatalf("not a traceparent: %q", v)
	}
	return p[1], p[2], p[3]
}

func header(h [][2]string, name string) []string {
	var out []string
	for _, kv := range h {
		if strings.EqualFold(kv[0], name) {
			out = append(out, kv[1])
		}
	}
	return out
}

// TestOneTrace: the accept span is a child of the client's span, the
// headers that travel carry it (tracestate kept), each attempt is a child
// of the accept span and hands the backend its own traceparent.
func TestOneTrace(t *testing.T) {
	rcv := tracingtest.NewReceiver(t)
	tr := start(t, rcv.URL, 1)

	acc := tr.Accept("POST", "logs", "/v1/logs", "logstore", clientParent, "vendor=abc")
	h := acc.Carry([][2]string{{"Content-Type", "application/json"}, {"Traceparent", clientParent}, {"Tracestate", "vendor=abc"}})
	acc.End("team-a", "req-1", 202)
	if got := header(h, "content-type"); len(got) != 1 {
		t.Fatalf("other headers not kept: %v", h)
	}
	tps, tss := header(h, "traceparent"), header(h, "tracestate")
	if len(tps) != 1 || len(tss) != 1 || tss[0] != "vendor=abc" {
		t.Fatalf("carried headers %v", h)
	}
	trace, acceptID, flags := traceparent(t, tps[0])
	if trace != clientTrace || acceptID == clientSpan || flags != "01" {
		t.Fatalf("carried traceparent %s: want the client's trace with a new span", tps[0])
	}

	req := &job.Request{ID: "req-1", Route: "logs", Backend: "logstore", Header: h}
	var sent []string
	for n, status := range []int{503, 200} {
		hr := httptest.NewRequest("POST", "http://user:pw@backend.internal:9001/ingest?token=secret", nil)
		for _, kv := range h {
			hr.Header.Add(kv[0], kv[1])
		}
		end := tr.Attempt(hr, req, n+1)
		if v := hr.Header.Values("Traceparent"); len(v) != 1 {
			t.Fatalf("backend gets traceparent %v", v)
		} else {
			sent = append(sent, v[0])
		}
		if hr.Header.Get("Tracestate") != "vendor=abc" {
			t.Fatalf("tracestate %q not kept", hr.Header.Get("Tracestate"))
		}
		end(status, "")
	}
	hr := httptest.NewRequest("POST", "http://backend.internal/ingest", nil)
	hr.Header.Set("Traceparent", tps[0])
	tr.Attempt(hr, req, 3)(0, "timeout")
	shutdown(t, tr) // flushes

	spans := rcv.Spans()
	if len(spans) != 4 {
		t.Fatalf("%d spans, want 4: %+v", len(spans), spans)
	}
	a := spans[0]
	if a.Kind != "server" || a.Name != "POST /v1/logs" || a.TraceID != clientTrace || a.ParentSpanID != clientSpan || a.SpanID != acceptID {
		t.Fatalf("accept span %+v", a)
	}
	wantAttrs(t, a, map[string]any{"sluice.route": "logs", "sluice.backend": "logstore", "sluice.client": "team-a",
		"sluice.request.id": "req-1", "http.response.status_code": int64(202), "http.route": "/v1/logs", "http.request.method": "POST"})
	if a.Resource["service.name"] != "sluice" || a.Resource["service.version"] != "test" {
		t.Fatalf("resource %v", a.Resource)
	}
	for i, s := range spans[1:] {
		if s.Kind != "client" || s.Name != "POST" || s.TraceID != clientTrace || s.ParentSpanID != acceptID {
			t.Fatalf("attempt %d span %+v: want a client span, child of the accept span %s", i+1, s, acceptID)
		}
		wantAttrs(t, s, map[string]any{"sluice.backend": "logstore", "sluice.route": "logs", "sluice.request.id": "req-1",
			"sluice.attempt": int64(i + 1), "server.address": "backend.internal"})
		if i < 2 {
			if _, id, _ := traceparent(t, sent[i]); id != s.SpanID {
				t.Errorf("attempt %d sent parent %s, its span is %s", i+1, id, s.SpanID)
			}
		}
	}
	wantAttrs(t, spans[1], map[string]any{"http.response.status_code": int64(503), "error.type": "503", "server.port": int64(9001),
		"url.full": "http://backend.internal:9001/ingest"})
	if spans[1].StatusCode != "error" || spans[2].StatusCode != "unset" {
		t.Errorf("statuses %s, %s: want error for the 503, unset for the 200", spans[1].StatusCode, spans[2].StatusCode)
	}
	wantAttrs(t, spans[2], map[string]any{"http.response.status_code": int64(200), "http.request.resend_count": int64(1)})
	if _, ok := spans[2].Attrs["error.type"]; ok {
		t.Errorf("a 200 has error.type")
	}
	wantAttrs(t, spans[3], map[string]any{"error.type": "timeout", "sluice.attempt": int64(3)})
	if _, ok := spans[3].Attrs["http.response.status_code"]; ok || spans[3].StatusMessage != "timeout" {
		t.Errorf("a timeout: %+v", spans[3])
	}
}

func wantAttrs(t *testing.T, s tracingtest.Span, want map[string]any) {
	t.Helper()
	for k, v := range want {
		if s.Attrs[k] != v {
			t.Errorf("span %s %s: %s = %#v, want %#v", s.Name, s.SpanID, k, s.Attrs[k], v)
		}
	}
}

// TestNewTrace: without a valid client traceparent the accept span starts
// a trace, and a tracestate that came without one is not carried.
func TestNewTrace(t *testing.T) {
	rcv := tracingtest.NewReceiver(t)
	tr := start(t, rcv.URL, 1)
	for _, tc := range []struct{ name, tp, ts string }{
		{"none", "", ""},
		{"garbage", "not-a-traceparent", "vendor=abc"},
		{"two lines", clientParent + "," + clientParent, "vendor=abc"},
		{"upper case", strings.ToUpper(clientParent), ""},
		{"zero trace id", "00-00000000000000000000000000000000-" + clientSpan + "-01", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			acc := tr.Accept("PUT", "r", "/r/", "b", tc.tp, tc.ts)
			h := acc.Carry([][2]string{{"traceparent", tc.tp}, {"tracestate", tc.ts}, {"X-Other", "1"}})
			acc.End("", "", 400)
			trace, _, flags := traceparent(t, header(h, "traceparent")[0])
			if trace == clientTrace || flags != "01" || len(header(h, "tracestate")) != 0 || len(h) != 2 {
				t.Fatalf("carried %v: want a new sampled trace, no tracestate", h)
			}
		})
	}
	shutdown(t, tr)
	for _, s := range rcv.Spans() {
		if s.ParentSpanID != "" || s.TraceID == clientTrace {
			t.Errorf("span %+v: want a root", s)
		}
		if _, ok := s.Attrs["sluice.client"]; ok {
			t.Errorf("no client, yet sluice.client is set")
		}
		if _, ok := s.Attrs["sluice.request.id"]; ok {
			t.Errorf("no id, yet sluice.request.id is set")
		}
	}
}

// TestSampleZero: with sample 0 no new trace is recorded, yet the context
// travels (not sampled) so the backend follows the decision; a client
// that sampled its trace is followed (parent based).
func TestSampleZero(t *testing.T) {
	rcv := tracingtest.NewReceiver(t)
	tr := start(t, rcv.URL, 0)
	for range 10 {
		acc := tr.Accept("POST", "r", "/r", "b", "", "")
		h := acc.Carry(nil)
		acc.End("", "id", 202)
		_, _, flags := traceparent(t, header(h, "traceparent")[0])
		if flags != "00" {
			t.Fatalf("flags %s, want 00 (not sampled)", flags)
		}
		hr := httptest.NewRequest("POST", "http://b/", nil)
		hr.Header.Set("Traceparent", header(h, "traceparent")[0])
		tr.Attempt(hr, &job.Request{ID: "id"}, 1)(200, "")
		if _, _, f := traceparent(t, hr.Header.Get("Traceparent")); f != "00" {
			t.Fatalf("attempt flags %s, want 00", f)
		}
	}
	tr.Accept("POST", "r", "/r", "b", "00-"+clientTrace+"-"+clientSpan+"-00", "").End("", "", 202) // client: not sampled
	sampled := tr.Accept("POST", "r", "/r", "b", clientParent, "")
	sampled.End("", "", 202)
	shutdown(t, tr)
	if s := rcv.Spans(); len(s) != 1 || s[0].TraceID != clientTrace {
		t.Fatalf("spans %+v: want only the one the client sampled", s)
	}
}

// TestUnreachable: a collector that never answers costs no time on the
// request path, and Shutdown ends within its context, leaving no
// goroutine of the SDK or the exporter behind.
func TestUnreachable(t *testing.T) {
	hang := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(hang)
	tr := start(t, srv.URL, 1)
	began := time.Now()
	for i := range 20000 { // more than the queue holds: the rest is dropped
		acc := tr.Accept("POST", "r", "/r", "b", "", "")
		acc.Carry(nil)
		acc.End("", "id", 202)
		hr := httptest.NewRequest("POST", "http://b/", nil)
		tr.Attempt(hr, &job.Request{ID: "id"}, i%5+1)(503, "")
	}
	if d := time.Since(began); d > 5*time.Second {
		t.Fatalf("40000 spans took %v with the collector hanging", d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	began = time.Now()
	if err := tr.Shutdown(ctx); err == nil {
		t.Errorf("Shutdown reported the spans flushed, yet the collector never answered")
	}
	if d := time.Since(began); d > time.Second {
		t.Errorf("Shutdown took %v with a 300ms context", d)
	}
	left := stacks.Left(2*time.Second, func() []string {
		return stacks.Matching(func(g string) bool {
			return strings.Contains(g, "go.opentelemetry.io/otel/sdk/trace.") || strings.Contains(g, "otlptracehttp.") ||
				strings.Contains(g, "net/http.(*persistConn)") && strings.Contains(g, "tracing")
		})
	})
	if len(left) > 0 {
		t.Fatalf("goroutines left after Shutdown:\n%s", strings.Join(left, "\n\n"))
	}
}

// TestShutdownFlushes: spans ended before Shutdown reach the collector by
// the time it returns, without waiting for the batch delay.
func TestShutdownFlushes(t *testing.T) {
	rcv := tracingtest.NewReceiver(t)
	tr := start(t, rcv.URL+"/", 1)
	for range 3 {
		tr.Accept("POST", "r", "/r", "b", "", "").End("", "", 202)
	}
	began := time.Now()
	shutdown(t, tr)
	if n := len(rcv.Spans()); n != 3 || time.Since(began) > 2*time.Second {
		t.Fatalf("%d spans after Shutdown (%v)", n, time.Since(began))
	}
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	var off *Tracer
	if err := off.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if tr, err := Start(nil, Options{}); tr != nil || err != nil {
		t.Fatalf("Start(nil) = %v, %v: want tracing off", tr, err)
	}
}

func TestTracesURL(t *testing.T) {
	for in, want := range map[string]string{
		"http://127.0.0.1:4318":                 "http://127.0.0.1:4318/v1/traces",
		"http://127.0.0.1:4318/":                "http://127.0.0.1:4318/v1/traces",
		"https://otel.example/otlp":             "https://otel.example/otlp/v1/traces",
		"https://otel.example/otlp/":            "https://otel.example/otlp/v1/traces",
		"http://collector:4318/v1/traces":       "http://collector:4318/v1/traces",
		"http://collector:4318/proxy/v1/traces": "http://collector:4318/proxy/v1/traces",
	} {
		if got, err := TracesURL(in); err != nil || got != want {
			t.Errorf("TracesURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := TracesURL("grpc://x:4317"); err == nil {
		t.Error("grpc:// accepted")
	}
}
