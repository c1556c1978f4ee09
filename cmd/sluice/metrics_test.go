package main

import (
	"encoding/json"
	"maps"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/sluice-gw/sluice/internal/wait"
)

// TestMetrics drives a running sluice and reads every SPEC §6 series off
// GET /metrics: submits accepted (202 and a route's ack 200) and refused
// (401, 400, 413) by client, route and code; deliveries that succeed after
// a 503, fail at once, and are dead-lettered; attempts and their duration
// histogram; a paused backend's queue depth, backlog and pause; deliveries
// in flight; a breaker that opened; the limits. /metrics is behind
// admin_token.
func TestMetrics(t *testing.T) {
	integration(t)
	// store: every request's first attempt gets 503, its retry 200.
	store := newBackend(t, func(h hit, n int) (int, map[string]string, string) {
		if n == 1 {
			return 503, nil, "busy"
		}
		return 200, nil, `{"ok":true}`
	})
	// crm: "bad" is refused (terminal), "down" always 503.
	crm := newBackend(t, func(h hit, _ int) (int, map[string]string, string) {
		if strings.Contains(h.Body, "bad") {
			return 400, nil, "bad"
		}
		return 503, nil, "down"
	})
	// parked: holds every delivery until released.
	release := make(chan struct{})
	parked := newBackend(t, func(hit, int) (int, map[string]string, string) {
		<-release
		return 200, nil, "ok"
	})
	var once sync.Once
	releaseAll := func() { once.Do(func() { close(release) }) }
	t.Cleanup(releaseAll) // before the backend closes: cleanups run last first

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "msg.json"), []byte(`{"type":"object","required":["msg"]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	g := startGatewayIn(t, dir, `
admin_token: metrics-token
auth:
  api_keys: [ { client: team-a, key: key-a-0123456789 } ]
routes:
  - { name: logs, path: /v1/logs, backend: store, max_body: 1KiB, schema: msg.json }
  - { name: hooks, path: /v1/hooks, backend: crm, ack: { status: 200 } }
  - { name: later, path: /v1/later, backend: parked }
backends:
`+backendCfg("store", store.URL, "    concurrency: 4\n    retry: { max_attempts: 3, initial_backoff: 10ms, max_backoff: 50ms }\n")+
		backendCfg("crm", crm.URL, "    retry: { max_attempts: 2, initial_backoff: 10ms, max_backoff: 50ms }\n    breaker: { failures: 2, cooldown: 1m }\n")+
		backendCfg("parked", parked.URL, "    rate: 10\n    concurrency: 5\n"))
	key := map[string]string{"X-API-Key": "key-a-0123456789"}
	admin := map[string]string{"Authorization": "Bearer metrics-token"}

	// /metrics is behind the admin token.
	if resp, body := do(t, "GET", g.admin+"/metrics", "", nil); resp.StatusCode != 401 || strings.Contains(string(body), "sluice_") {
		t.Fatalf("/metrics without the token: %d %.200s", resp.StatusCode, body)
	}

	// Ingest: 5 accepted, 3 failing the schema, 2 too large, 1 without
	// credentials on logs; 2 accepted with the ack status 200 on hooks.
	const okBody = `{"msg":"hello"}`
	var logsIDs []string
	for range 5 {
		resp, body := do(t, "POST", g.base+"/v1/logs", okBody, key)
		if resp.StatusCode != 202 {
			t.Fatalf("submit: %d %s", resp.StatusCode, body)
		}
		var a accepted
		_ = json.Unmarshal(body, &a)
		logsIDs = append(logsIDs, a.ID)
	}
	for range 3 {
		if resp, _ := do(t, "POST", g.base+"/v1/logs", `{"nomsg":1}`, key); resp.StatusCode != 400 {
			t.Fatalf("schema mismatch: %d", resp.StatusCode)
		}
	}
	for range 2 {
		if resp, _ := do(t, "POST", g.base+"/v1/logs", `{"msg":"`+strings.Repeat("x", 2000)+`"}`, key); resp.StatusCode != 413 {
			t.Fatalf("too large: %d", resp.StatusCode)
		}
	}
	if resp, _ := do(t, "POST", g.base+"/v1/logs", okBody, nil); resp.StatusCode != 401 {
		t.Fatalf("no credentials: %d", resp.StatusCode)
	}
	// bad first (a 400 resets the breaker's count), then down: two 503s
	// exhaust its attempts and open the breaker (failures: 2).
	for _, body := range []string{`{"kind":"bad"}`, `{"kind":"down"}`} {
		resp, b := do(t, "POST", g.base+"/v1/hooks", body, key)
		if resp.StatusCode != 200 {
			t.Fatalf("hooks answers its ack status 200: %d %s", resp.StatusCode, b)
		}
		var a accepted
		_ = json.Unmarshal(b, &a)
		awaitWith(t, g, a.ID, key)
	}
	for _, id := range logsIDs {
		awaitWith(t, g, id, key)
	}

	// parked: paused, 3 requests wait in its queue.
	if resp, body := do(t, "PATCH", g.admin+"/admin/backends/parked", `{"paused":true}`, admin); resp.StatusCode != 200 {
		t.Fatalf("pause: %d %s", resp.StatusCode, body)
	}
	for range 3 {
		if resp, _ := do(t, "POST", g.base+"/v1/later", `{}`, key); resp.StatusCode != 202 {
			t.Fatalf("submit to parked: %d", resp.StatusCode)
		}
	}
	var fams map[string]*dto.MetricFamily
	wait.For(t, 10*time.Second, "queue depth 3 for the paused backend, 0 for the others", func() bool {
		fams = scrape(t, g, admin)
		p, _ := metricValue(fams, "sluice_queue_depth", "backend", "parked")
		s, _ := metricValue(fams, "sluice_queue_depth", "backend", "store")
		c, _ := metricValue(fams, "sluice_queue_depth", "backend", "crm")
		return p == 3 && s == 0 && c == 0
	})

	bytesOK := float64(5 * len(okBody))
	checks := []struct {
		name   string
		labels []string
		want   float64
	}{
		{"sluice_requests_total", []string{"route", "logs", "client", "team-a", "code", "202"}, 5},
		{"sluice_requests_total", []string{"route", "logs", "client", "team-a", "code", "400"}, 3},
		{"sluice_requests_total", []string{"route", "logs", "client", "team-a", "code", "413"}, 2},
		{"sluice_requests_total", []string{"route", "logs", "code", "401"}, 1}, // client "": no label
		{"sluice_requests_total", []string{"route", "hooks", "client", "team-a", "code", "200"}, 2},
		{"sluice_requests_total", []string{"route", "later", "client", "team-a", "code", "202"}, 3},
		{"sluice_request_bytes_total", []string{"route", "logs", "client", "team-a"}, bytesOK},
		{"sluice_request_bytes_total", []string{"route", "hooks", "client", "team-a"}, float64(len(`{"kind":"bad"}`) + len(`{"kind":"down"}`))},

		{"sluice_deliveries_total", []string{"backend", "store", "outcome", "succeeded"}, 5},
		{"sluice_deliveries_total", []string{"backend", "store", "outcome", "retried"}, 5},
		{"sluice_deliveries_total", []string{"backend", "store", "outcome", "failed"}, 0},
		{"sluice_deliveries_total", []string{"backend", "store", "outcome", "dead_lettered"}, 0},
		{"sluice_deliveries_total", []string{"backend", "crm", "outcome", "succeeded"}, 0},
		{"sluice_deliveries_total", []string{"backend", "crm", "outcome", "failed"}, 2},
		{"sluice_deliveries_total", []string{"backend", "crm", "outcome", "retried"}, 1},
		{"sluice_deliveries_total", []string{"backend", "crm", "outcome", "dead_lettered"}, 1},
		{"sluice_delivery_attempts_total", []string{"backend", "store"}, 10},
		{"sluice_delivery_attempts_total", []string{"backend", "crm"}, 3},
		{"sluice_delivery_attempts_total", []string{"backend", "parked"}, 0},

		{"sluice_queue_depth", []string{"backend", "parked"}, 3},
		{"sluice_queue_depth", []string{"backend", "store"}, 0},
		{"sluice_backend_paused", []string{"backend", "parked"}, 1},
		{"sluice_backend_paused", []string{"backend", "store"}, 0},
		{"sluice_breaker_open", []string{"backend", "crm"}, 1},
		{"sluice_breaker_open", []string{"backend", "store"}, 0},
		{"sluice_backend_concurrency", []string{"backend", "store"}, 4},
		{"sluice_backend_concurrency", []string{"backend", "parked"}, 5},
		{"sluice_backend_rate", []string{"backend", "parked"}, 10},
		{"sluice_backend_rate", []string{"backend", "store"}, 0},
		{"sluice_in_flight", []string{"backend", "store"}, 0},
	}
	for _, c := range checks {
		if got, ok := metricValue(fams, c.name, c.labels...); !ok || got != c.want {
			t.Errorf("%s%v = %v (found %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
	if v, ok := metricValue(fams, "sluice_backlog_seconds", "backend", "parked"); !ok || v < 0.4 {
		t.Errorf("backlog seconds of 3 waiting at rate 10: %v (found %v), want at least 0.4", v, ok)
	}
	if v, ok := metricValue(fams, "sluice_backlog_seconds", "backend", "store"); !ok || v != 0 {
		t.Errorf("backlog seconds of an empty queue: %v (found %v)", v, ok)
	}
	for backend, n := range map[string]uint64{"store": 10, "crm": 3, "parked": 0} {
		h := findMetric(fams, "sluice_delivery_duration_seconds", "backend", backend).GetHistogram()
		if h.GetSampleCount() != n {
			t.Errorf("duration histogram of %s: %d attempts, want %d", backend, h.GetSampleCount(), n)
		}
		b := h.GetBucket()
		if n > 0 && (h.GetSampleSum() <= 0 || len(b) == 0 || b[len(b)-1].GetCumulativeCount() > n) {
			t.Errorf("duration histogram of %s: sum %v, buckets %v", backend, h.GetSampleSum(), b)
		}
	}
	for _, f := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if fams[f] == nil {
			t.Errorf("no %s", f)
		}
	}

	// Unpaused, the held deliveries are in flight and the queue drains.
	do(t, "PATCH", g.admin+"/admin/backends/parked", `{"paused":false}`, admin)
	wait.For(t, 10*time.Second, "3 deliveries in flight to parked", func() bool {
		fams = scrape(t, g, admin)
		v, _ := metricValue(fams, "sluice_in_flight", "backend", "parked")
		return v == 3
	})
	releaseAll()
	wait.For(t, 10*time.Second, "parked drained", func() bool {
		fams = scrape(t, g, admin)
		f, _ := metricValue(fams, "sluice_in_flight", "backend", "parked")
		d, _ := metricValue(fams, "sluice_queue_depth", "backend", "parked")
		s, _ := metricValue(fams, "sluice_deliveries_total", "backend", "parked", "outcome", "succeeded")
		return f == 0 && d == 0 && s == 3
	})
	if n := findMetric(fams, "sluice_delivery_duration_seconds", "backend", "parked").GetHistogram().GetSampleCount(); n != 3 {
		t.Errorf("parked's histogram: %d attempts, want 3", n)
	}
}

// TestMetricsOff: with metrics: false, /metrics is a 404 and the backends
// still answer their figures.
func TestMetricsOff(t *testing.T) {
	integration(t)
	be := newBackend(t, nil)
	g := startGateway(t, "metrics: false\nroutes: [{ name: r, path: /r, backend: b }]\nbackends:\n"+backendCfg("b", be.URL, ""))
	resp, body := do(t, "GET", g.admin+"/metrics", "", nil)
	if resp.StatusCode != 404 || !strings.Contains(string(body), "metrics: false") {
		t.Fatalf("/metrics with metrics: false: %d %s", resp.StatusCode, body)
	}
	a := g.submit("/r", `{}`, nil)
	if r := g.await(a.ID, 10*time.Second); r.Status != "succeeded" {
		t.Fatalf("delivery: %+v", r)
	}
	if resp, body := do(t, "GET", g.admin+"/admin/backends/b", "", nil); resp.StatusCode != 200 ||
		!strings.Contains(string(body), `"succeeded":1`) || !strings.Contains(string(body), `"concurrency_limit":16`) {
		t.Fatalf("backend: %d %s", resp.StatusCode, body)
	}
}

// awaitWith long-polls id with the client's credentials until it is
// terminal.
func awaitWith(t *testing.T, g *gw, id string, hdr map[string]string) record {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, b := do(t, "GET", g.base+"/v1/requests/"+id+"?wait=5s", "", hdr)
		if resp.StatusCode != 200 {
			t.Fatalf("poll %s: %d %s", id, resp.StatusCode, b)
		}
		var r record
		_ = json.Unmarshal(b, &r)
		if r.Status == "succeeded" || r.Status == "failed" {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("request %s still %s", id, r.Status)
		}
	}
}

// scrape reads GET /metrics and parses the text format.
func scrape(t *testing.T, g *gw, hdr map[string]string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, body := do(t, "GET", g.admin+"/metrics", "", hdr)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("/metrics: %d %s %.300s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// findMetric is the series of family name with exactly the labels given
// as name, value pairs (a label with an empty value is no label, as in
// Prometheus); nil if there is none.
func findMetric(fams map[string]*dto.MetricFamily, name string, labels ...string) *dto.Metric {
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	f := fams[name]
	if f == nil {
		return nil
	}
	for _, m := range f.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			if l.GetValue() != "" {
				got[l.GetName()] = l.GetValue()
			}
		}
		if maps.Equal(got, want) {
			return m
		}
	}
	return nil
}

// metricValue is a counter's or gauge's value.
func metricValue(fams map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	m := findMetric(fams, name, labels...)
	switch {
	case m == nil:
		return math.NaN(), false
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue(), true
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue(), true
	}
	return math.NaN(), false
}
