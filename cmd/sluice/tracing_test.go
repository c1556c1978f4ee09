package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/tracing/tracingtest"
)

const (
	clientTraceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	clientSpanID  = "00f067aa0ba902b7"
)

// w3c splits a traceparent into trace id, parent span id and flags.
func w3c(t *testing.T, tp string) (trace, span, flags string) {
	t.Helper()
	p := strings.Split(tp, "-")
	if len(p) != 4 || p[0] != "00" || len(p[1]) != 32 || len(p[2]) != 16 || len(p[3]) != 2 {
		t.Fatalf("not a traceparent: %q", tp)
	}
	return p[1], p[2], p[3]
}

func spanAttr(t *testing.T, s tracingtest.Span, want map[string]any) {
	t.Helper()
	for k, v := range want {
		if s.Attrs[k] != v {
			t.Errorf("%s span %s: %s = %#v, want %#v", s.Kind, s.SpanID, k, s.Attrs[k], v)
		}
	}
}

// TestTracingOneTrace: a client's traceparent, a first attempt answered
// 503 and a second 200 make one trace: the accept span is the client's
// span's child, both attempt spans are the accept span's children, and
// each attempt hands the backend a traceparent whose parent is that
// attempt's span, tracestate kept.
func TestTracingOneTrace(t *testing.T) {
	integration(t)
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "100") // ms: spans come while it runs
	rcv := tracingtest.NewReceiver(t)
	be := newBackend(t, func(h hit, n int) (int, map[string]string, string) {
		if n == 1 {
			return 503, nil, "busy"
		}
		return 200, nil, "done"
	})
	g := startGateway(t, `
auth: { api_keys: [ { client: team-a, key: key-a-0123456789 } ] }
routes: [{ name: logs, path: /v1/logs, backend: logstore }]
backends:
`+backendCfg("logstore", be.URL, "    retry: { max_attempts: 3, initial_backoff: 50ms, max_backoff: 100ms }\n")+`
tracing: { otlp_endpoint: "`+rcv.URL+`", sample: 1.0 }
`)
	clientParent := "00-" + clientTraceID + "-" + clientSpanID + "-01"
	a := g.submit("/v1/logs", `{"m":1}`, map[string]string{"X-API-Key": "key-a-0123456789",
		"traceparent": clientParent, "tracestate": "vendor=abc"})
	if r := g.awaitAs(a.ID, map[string]string{"X-API-Key": "key-a-0123456789"}, 20*time.Second); r.Status != "succeeded" || r.Attempts != 2 {
		t.Fatalf("record %+v", r)
	}
	spans := rcv.WaitFor(t, 3, 20*time.Second) // exported while sluice runs

	var accept tracingtest.Span
	var attempts []tracingtest.Span
	for _, s := range spans {
		switch s.Kind {
		case "server":
			accept = s
		case "client":
			attempts = append(attempts, s)
		}
	}
	if len(spans) != 3 || len(attempts) != 2 || accept.SpanID == "" {
		t.Fatalf("spans %+v: want one accept (server) and two attempts (client)", spans)
	}
	if accept.TraceID != clientTraceID || accept.ParentSpanID != clientSpanID || accept.Name != "POST /v1/logs" {
		t.Fatalf("accept span %+v: want a child of the client's span %s in trace %s", accept, clientSpanID, clientTraceID)
	}
	spanAttr(t, accept, map[string]any{"sluice.route": "logs", "sluice.backend": "logstore", "sluice.client": "team-a",
		"sluice.request.id": a.ID, "http.response.status_code": int64(202), "http.route": "/v1/logs", "http.request.method": "POST"})
	if accept.Resource["service.name"] != "sluice" || accept.Resource["service.version"] == nil {
		t.Errorf("resource %v", accept.Resource)
	}
	if attempts[0].Attrs["sluice.attempt"] != int64(1) {
		attempts[0], attempts[1] = attempts[1], attempts[0]
	}
	for i, s := range attempts {
		if s.TraceID != clientTraceID || s.ParentSpanID != accept.SpanID {
			t.Errorf("attempt %d span %+v: want a child of the accept span %s", i+1, s, accept.SpanID)
		}
		spanAttr(t, s, map[string]any{"sluice.attempt": int64(i + 1), "sluice.backend": "logstore", "sluice.request.id": a.ID,
			"sluice.route": "logs", "http.request.method": "POST"})
	}
	spanAttr(t, attempts[0], map[string]any{"http.response.status_code": int64(503), "error.type": "503"})
	spanAttr(t, attempts[1], map[string]any{"http.response.status_code": int64(200)})
	if attempts[0].StatusCode != "error" || attempts[1].StatusCode != "unset" {
		t.Errorf("span statuses %s, %s: want error for the 503", attempts[0].StatusCode, attempts[1].StatusCode)
	}
	if !attempts[1].Start.After(attempts[0].End) {
		t.Errorf("attempt 2 began %v, before attempt 1 ended %v", attempts[1].Start, attempts[0].End)
	}

	hits := be.hitsFor(a.ID)
	if len(hits) != 2 {
		t.Fatalf("%d hits, want 2", len(hits))
	}
	for i, h := range hits {
		tps := h.Header.Values("Traceparent")
		if len(tps) != 1 {
			t.Fatalf("hit %d: traceparent %q, want one", i+1, tps)
		}
		trace, parent, flags := w3c(t, tps[0])
		if trace != clientTraceID || parent != attempts[i].SpanID || flags != "01" {
			t.Errorf("hit %d: traceparent %s, want trace %s with parent %s (attempt %d's span)", i+1, tps[0], clientTraceID, attempts[i].SpanID, i+1)
		}
		if ts := h.Header.Values("Tracestate"); len(ts) != 1 || ts[0] != "vendor=abc" {
			t.Errorf("hit %d: tracestate %q, want the client's", i+1, ts)
		}
	}
}

// TestTracingOffPassesTraceparent: without tracing the backend gets the
// client's traceparent and tracestate exactly as sent (SPEC §4).
func TestTracingOffPassesTraceparent(t *testing.T) {
	integration(t)
	t.Parallel()
	be := newBackend(t, nil)
	g := startGateway(t, `
routes: [{ name: r, path: /r, backend: b }]
backends:
`+backendCfg("b", be.URL, ""))
	tp := "00-" + clientTraceID + "-" + clientSpanID + "-01"
	a := g.submit("/r", "x", map[string]string{"traceparent": tp, "tracestate": "vendor=abc,other=x"})
	g.await(a.ID, 20*time.Second)
	h := be.hitsFor(a.ID)[0]
	if got := h.Header.Values("Traceparent"); len(got) != 1 || got[0] != tp {
		t.Fatalf("backend got traceparent %q, want %q", got, tp)
	}
	if got := h.Header.Values("Tracestate"); len(got) != 1 || got[0] != "vendor=abc,other=x" {
		t.Fatalf("backend got tracestate %q", got)
	}
	a = g.submit("/r", "y", nil)
	g.await(a.ID, 20*time.Second)
	if got := be.hitsFor(a.ID)[0].Header.Values("Traceparent"); len(got) != 0 {
		t.Fatalf("backend got traceparent %q though the client sent none", got)
	}
}

// TestTracingSampleZero: with sample 0 nothing is exported, while every
// request is still delivered with a traceparent saying "not sampled", so
// the backend follows the decision.
func TestTracingSampleZero(t *testing.T) {
	integration(t)
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
	rcv := tracingtest.NewReceiver(t)
	be := newBackend(t, nil)
	g := startGateway(t, `
routes: [{ name: r, path: /r, backend: b }]
backends:
`+backendCfg("b", be.URL, "")+`
tracing: { otlp_endpoint: "`+rcv.URL+`", sample: 0 }
`)
	unsampled := "00-" + clientTraceID + "-" + clientSpanID + "-00"
	var ids []string
	for i := range 10 {
		hdr := map[string]string{}
		if i%2 == 1 {
			hdr["traceparent"] = unsampled
		}
		ids = append(ids, g.submit("/r", "x", hdr).ID)
	}
	for i, id := range ids {
		g.await(id, 20*time.Second)
		trace, _, flags := w3c(t, be.hitsFor(id)[0].Header.Get("Traceparent"))
		if flags != "00" || (i%2 == 1) != (trace == clientTraceID) {
			t.Errorf("request %d: backend got trace %s flags %s", i, trace, flags)
		}
	}
	g.stop() // flushes whatever there is
	if n, s := rcv.Requests(), rcv.Spans(); n != 0 || len(s) != 0 {
		t.Fatalf("sample 0: %d exports, %d spans", n, len(s))
	}
}

// TestTracingCollectorDown: a collector that refuses connections, or
// takes them and never answers, slows no submit and fails none (spans
// past the queue are dropped), every request is delivered, and the stop
// still ends within shutdown_timeout.
func TestTracingCollectorDown(t *testing.T) {
	integration(t)
	// A small queue, so the test overflows it.
	t.Setenv("OTEL_BSP_MAX_QUEUE_SIZE", "16")
	t.Setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "8")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
	hang := make(chan struct{})
	hanging := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	defer hanging.Close()
	defer close(hang)
	refused := httptest.NewServer(http.NotFoundHandler())
	refused.Close() // its port now refuses connections

	for name, endpoint := range map[string]string{"hanging": hanging.URL, "refused": refused.URL} {
		t.Run(name, func(t *testing.T) {
			be := newBackend(t, nil)
			g := startGateway(t, `
shutdown_timeout: 3s
routes: [{ name: r, path: /r, backend: b }]
backends:
`+backendCfg("b", be.URL, "")+`
tracing: { otlp_endpoint: "`+endpoint+`" }
`)
			var mu sync.Mutex
			var ids []string
			var slowest time.Duration
			var wg sync.WaitGroup
			for w := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range 50 {
						began := time.Now()
						resp, body := do(t, "POST", g.base+"/r", fmt.Sprintf(`{"w":%d,"i":%d}`, w, i),
							map[string]string{"traceparent": "00-" + clientTraceID + "-" + clientSpanID + "-01"})
						took := time.Since(began)
						if resp.StatusCode != 202 {
							t.Errorf("submit: %d %s", resp.StatusCode, body)
							return
						}
						mu.Lock()
						ids = append(ids, resp.Header.Get("X-Request-Id"))
						slowest = max(slowest, took)
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			// An export that blocked the request path would hold a submit
			// for its timeout (5 s) at least.
			if slowest > 2*time.Second {
				t.Errorf("the slowest submit took %v with the collector %s", slowest, name)
			}
			for _, id := range ids {
				if r := g.await(id, 30*time.Second); r.Status != "succeeded" {
					t.Fatalf("request %s: %+v", id, r)
				}
			}
			began := time.Now()
			g.stop()
			if d := time.Since(began); d > 4*time.Second {
				t.Errorf("stop took %v; shutdown_timeout is 3s", d)
			}
		})
	}
}

// TestTracingGroupCommit: requests written together in one broker message
// keep their own trace each: every backend hit carries its own client's
// trace, with an attempt span of it as parent.
func TestTracingGroupCommit(t *testing.T) {
	integration(t)
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
	rcv := tracingtest.NewReceiver(t)
	be := newBackend(t, func(h hit, n int) (int, map[string]string, string) {
		time.Sleep(20 * time.Millisecond)
		return 200, nil, "ok"
	})
	g := startGateway(t, `
group_commit: { max_requests: 64, writes: 1 }
routes: [{ name: r, path: /r, backend: b }]
backends:
`+backendCfg("b", be.URL, "")+`
tracing: { otlp_endpoint: "`+rcv.URL+`" }
`)
	const n = 40
	traces := make([]string, n)
	ids := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		traces[i] = fmt.Sprintf("%032x", i+1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ids[i] = g.submit("/r", "x", map[string]string{"traceparent": "00-" + traces[i] + "-" + clientSpanID + "-01"}).ID
		}()
	}
	wg.Wait()
	for _, id := range ids {
		g.await(id, 20*time.Second)
	}
	spans := rcv.WaitFor(t, 2*n, 20*time.Second)
	bySpan := map[string]tracingtest.Span{}
	for _, s := range spans {
		bySpan[s.SpanID] = s
	}
	for i, id := range ids {
		trace, parent, _ := w3c(t, be.hitsFor(id)[0].Header.Get("Traceparent"))
		att := bySpan[parent]
		acc := bySpan[att.ParentSpanID]
		if trace != traces[i] || att.Kind != "client" || att.TraceID != traces[i] || att.Attrs["sluice.request.id"] != id ||
			acc.Kind != "server" || acc.TraceID != traces[i] || acc.Attrs["sluice.request.id"] != id || acc.ParentSpanID != clientSpanID {
			t.Errorf("request %d (%s): backend trace %s, attempt span %+v, accept span %+v; want its own trace %s", i, id, trace, att, acc, traces[i])
		}
	}
}

// TestTracingAcrossProcesses: an ingress process and two worker processes
// (Kafka, RabbitMQ; results in Redis), each exporting its own spans: the
// accept span from the one, the attempts from the others, minutes or
// milliseconds apart, make one trace, joined by the context the request
// carried through the broker.
func TestTracingAcrossProcesses(t *testing.T) {
	integration(t)
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "100") // the child processes inherit it
	eachBroker(t, []string{"kafka", "rabbitmq"}, []string{"b"}, func(t *testing.T, _, brokerCfg, prefix string) {
		rcv := tracingtest.NewReceiver(t)
		be := newBackend(t, func(h hit, n int) (int, map[string]string, string) {
			if n == 1 {
				return 503, nil, "busy"
			}
			return 200, nil, "done"
		})
		dir := t.TempDir()
		cfg := splitConfig(t, dir, brokerCfg+"\ntracing: { otlp_endpoint: \""+rcv.URL+"\" }\n", prefix, be.URL,
			"    retry: { max_attempts: 3, initial_backoff: 50ms, max_backoff: 100ms }\n")
		front := startRoles(t, cfg, "ingress,collector")
		startRoles(t, cfg, "worker")
		startRoles(t, cfg, "worker")

		const n = 4
		var ids []string
		for i := range n {
			tp := fmt.Sprintf("00-%032x-%s-01", i+1, clientSpanID)
			resp, body := do(t, "POST", front.base+"/r", "x", map[string]string{"traceparent": tp})
			if resp.StatusCode != 202 {
				t.Fatalf("submit: %d %s", resp.StatusCode, body)
			}
			ids = append(ids, resp.Header.Get("X-Request-Id"))
		}
		awaitAll(t, front.base, ids, 60*time.Second)
		spans := rcv.WaitFor(t, 3*n, 30*time.Second)
		byID := map[string][]tracingtest.Span{}
		for _, s := range spans {
			id, _ := s.Attrs["sluice.request.id"].(string)
			byID[id] = append(byID[id], s)
		}
		for i, id := range ids {
			trace := fmt.Sprintf("%032x", i+1)
			var accept tracingtest.Span
			var attempts []tracingtest.Span
			for _, s := range byID[id] {
				if s.Kind == "server" {
					accept = s
				} else {
					attempts = append(attempts, s)
				}
			}
			if accept.TraceID != trace || accept.ParentSpanID != clientSpanID || len(attempts) != 2 {
				t.Fatalf("request %d: spans %+v", i, byID[id])
			}
			for _, a := range attempts {
				if a.TraceID != trace || a.ParentSpanID != accept.SpanID {
					t.Errorf("request %d: attempt span %+v, want a child of %s", i, a, accept.SpanID)
				}
			}
			for _, h := range be.hitsFor(id) {
				tr, parent, _ := w3c(t, h.Header.Get("Traceparent"))
				if tr != trace || (parent != attempts[0].SpanID && parent != attempts[1].SpanID) {
					t.Errorf("request %d: backend got %s", i, h.Header.Get("Traceparent"))
				}
			}
		}
	})
}
