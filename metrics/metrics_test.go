package metrics

import (
	"bytes"
	"flag"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/sluice-gw/sluice/backlog"
	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/metering"
	"github.com/sluice-gw/sluice/workers"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// Fakes: small function-field structs.

type fakeBackends struct {
	names  []string
	status func(name string) (workers.Status, bool)
}

var _ Backends = (*fakeBackends)(nil)

func (f *fakeBackends) Names() []string                           { return f.names }
func (f *fakeBackends) Status(name string) (workers.Status, bool) { return f.status(name) }

type fakeBacklog struct {
	estimate func(topic string, rate float64, slots int) backlog.Estimate
}

var _ Backlog = (*fakeBacklog)(nil)

func (f *fakeBacklog) Estimate(topic string, rate float64, slots int) backlog.Estimate {
	return f.estimate(topic, rate, slots)
}

type fakeMeter struct{ byStatus func() []metering.Answers }

var _ Meter = (*fakeMeter)(nil)

func (f *fakeMeter) ByStatus() []metering.Answers { return f.byStatus() }

// latency builds a workers.Latency from per-bucket (not cumulative)
// counts keyed by bucket bound, plus the ones past the last bound.
func latency(per map[time.Duration]uint64, over uint64, sum time.Duration) workers.Latency {
	var l workers.Latency
	var n uint64
	for i, b := range workers.LatencyBounds() {
		n += per[b]
		l.Buckets[i] = n
	}
	l.Count, l.Sum = n+over, sum
	return l
}

// sources are two backends and two clients with every figure set apart.
func sources(t *testing.T) Sources {
	logstore := workers.Status{
		Settings: workers.Settings{Rate: 200, Burst: 20, Concurrency: 16},
		State:    workers.State{InFlight: 3, Breaker: "closed", Share: 0.5, Limit: 8},
		Attempts: 120, Succeeded: 90, Failed: 7, Retried: 23, DeadLettered: 2,
		Latency: latency(map[time.Duration]uint64{5 * time.Millisecond: 60, 25 * time.Millisecond: 50, time.Second: 9},
			1, 2*time.Minute+3*time.Second),
	}
	crm := workers.Status{
		Settings: workers.Settings{Rate: 0, Burst: 1, Concurrency: 4, Paused: true},
		State:    workers.State{Breaker: "open", Share: 1, Limit: 4},
		Attempts: 20, Failed: 20, Retried: 19,
	}
	return Sources{
		Backends: &fakeBackends{names: []string{"logstore", "crm"}, status: func(name string) (workers.Status, bool) {
			switch name {
			case "logstore":
				return logstore, true
			case "crm":
				return crm, true
			}
			return workers.Status{}, false
		}},
		Backlog: &fakeBacklog{estimate: func(topic string, rate float64, slots int) backlog.Estimate {
			switch topic {
			case broker.RequestTopic("logstore"):
				if rate != 200 || slots != 16 {
					t.Errorf("estimate of logstore with rate %v, slots %d: want the settings (200, 16)", rate, slots)
				}
				return backlog.Estimate{Depth: 1500, Drain: 100, Wait: 15*time.Second + 10*time.Millisecond}
			case broker.RequestTopic("crm"):
				return backlog.Estimate{Depth: 40, Wait: 70 * time.Second, Stalled: true}
			}
			t.Errorf("estimate of unknown topic %q", topic)
			return backlog.Estimate{}
		}},
		Meter: &fakeMeter{byStatus: func() []metering.Answers {
			return []metering.Answers{
				{Client: "", Route: "logs", ByStatus: map[int]int64{401: 4}},
				{Client: "team-a", Route: "logs", Bytes: 4096, ByStatus: map[int]int64{202: 4, 413: 1, 400: 2}},
				{Client: "team-a", Route: "hooks", Bytes: 10, ByStatus: map[int]int64{200: 1}},
			}
		}},
	}
}

// TestCollect: every sluice_* series, its labels and values, against
// testdata/collect.golden (go test -update rewrites it).
func TestCollect(t *testing.T) {
	c := newCollector(sources(t))
	got := mustFormat(t, c)
	golden := filepath.Join("testdata", "collect.golden")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if err := testutil.CollectAndCompare(c, strings.NewReader(string(want))); err != nil {
		t.Fatalf("differs from %s: %v\n--- got\n%s", golden, err, got)
	}
}

// TestValues checks the figures that matter one by one, so a broken
// golden file cannot hide them.
func TestValues(t *testing.T) {
	fams := parse(t, mustFormat(t, newCollector(sources(t))))
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"sluice_requests_total", map[string]string{"route": "logs", "client": "team-a", "code": "202"}, 4},
		{"sluice_requests_total", map[string]string{"route": "logs", "client": "team-a", "code": "413"}, 1},
		{"sluice_requests_total", map[string]string{"route": "hooks", "client": "team-a", "code": "200"}, 1},
		{"sluice_requests_total", map[string]string{"route": "logs", "client": "", "code": "401"}, 4},
		{"sluice_request_bytes_total", map[string]string{"route": "logs", "client": "team-a"}, 4096},
		{"sluice_deliveries_total", map[string]string{"backend": "logstore", "outcome": "succeeded"}, 90},
		{"sluice_deliveries_total", map[string]string{"backend": "logstore", "outcome": "failed"}, 7},
		{"sluice_deliveries_total", map[string]string{"backend": "logstore", "outcome": "retried"}, 23},
		{"sluice_deliveries_total", map[string]string{"backend": "logstore", "outcome": "dead_lettered"}, 2},
		{"sluice_delivery_attempts_total", map[string]string{"backend": "logstore"}, 120},
		{"sluice_queue_depth", map[string]string{"backend": "logstore"}, 1500},
		{"sluice_backlog_seconds", map[string]string{"backend": "logstore"}, 15.01},
		{"sluice_backlog_seconds", map[string]string{"backend": "crm"}, 70},
		{"sluice_backend_concurrency", map[string]string{"backend": "logstore"}, 8},
		{"sluice_backend_rate", map[string]string{"backend": "logstore"}, 100}, // 200 at a share of 0.5
		{"sluice_backend_rate", map[string]string{"backend": "crm"}, 0},
		{"sluice_in_flight", map[string]string{"backend": "logstore"}, 3},
		{"sluice_breaker_open", map[string]string{"backend": "logstore"}, 0},
		{"sluice_breaker_open", map[string]string{"backend": "crm"}, 1},
		{"sluice_backend_paused", map[string]string{"backend": "logstore"}, 0},
		{"sluice_backend_paused", map[string]string{"backend": "crm"}, 1},
	}
	for _, c := range checks {
		got, ok := value(fams, c.name, c.labels)
		if !ok || got != c.want {
			t.Errorf("%s%v = %v (found %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
	h := metric(fams, "sluice_delivery_duration_seconds", map[string]string{"backend": "logstore"})
	if h == nil || h.GetHistogram() == nil {
		t.Fatal("no sluice_delivery_duration_seconds{backend=logstore}")
	}
	hist := h.GetHistogram()
	if hist.GetSampleCount() != 120 || hist.GetSampleSum() != 123 {
		t.Errorf("histogram count %d sum %v, want 120 and 123", hist.GetSampleCount(), hist.GetSampleSum())
	}
	cum := map[float64]uint64{}
	for _, b := range hist.GetBucket() {
		cum[b.GetUpperBound()] = b.GetCumulativeCount()
	}
	for le, want := range map[float64]uint64{0.001: 0, 0.005: 60, 0.01: 60, 0.025: 110, 1: 119, 60: 119, math.Inf(1): 120} {
		if cum[le] != want {
			t.Errorf("bucket le=%v: %d, want %d", le, cum[le], want)
		}
	}
	if len(cum) != workers.LatencyBuckets+1 {
		t.Errorf("%d buckets, want %d and +Inf", len(cum), workers.LatencyBuckets)
	}
}

// TestLint: names, units and help texts follow Prometheus's conventions.
func TestLint(t *testing.T) {
	problems, err := testutil.CollectAndLint(newCollector(sources(t)))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

// TestHandler: the handler serves the text format with the Go and
// process collectors; without a Meter (no ingress role) and with no
// backlog, the rest is still there.
func TestHandler(t *testing.T) {
	src := sources(t)
	src.Meter, src.Backlog = nil, nil
	srv := httptest.NewServer(New(src))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain; version=0.0.4") {
		t.Fatalf("status %d, content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	p := parser()
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"go_goroutines", "process_cpu_seconds_total", "sluice_deliveries_total",
		"sluice_delivery_duration_seconds", "sluice_backend_concurrency"} {
		if fams[want] == nil {
			t.Errorf("no %s", want)
		}
	}
	for _, absent := range []string{"sluice_requests_total", "sluice_request_bytes_total", "sluice_queue_depth"} {
		if fams[absent] != nil {
			t.Errorf("%s without its source", absent)
		}
	}
}

// Helpers shared with deploy_test.go.

func parser() expfmt.TextParser { return expfmt.NewTextParser(model.UTF8Validation) }

// mustFormat collects c through a pedantic registry (which checks each
// series against its description) into the text format. (CollectAndFormat
// with no names keeps no family.)
func mustFormat(t *testing.T, c *collector) []byte {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	enc := expfmt.NewEncoder(&b, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, f := range fams {
		if err := enc.Encode(f); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

func parse(t *testing.T, text []byte) map[string]*dto.MetricFamily {
	t.Helper()
	p := parser()
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(text)))
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

// metric finds the series of family name with exactly labels.
func metric(fams map[string]*dto.MetricFamily, name string, labels map[string]string) *dto.Metric {
	f := fams[name]
	if f == nil {
		return nil
	}
next:
	for _, m := range f.GetMetric() {
		if len(m.GetLabel()) != len(labels) {
			continue
		}
		for _, l := range m.GetLabel() {
			if v, ok := labels[l.GetName()]; !ok || v != l.GetValue() {
				continue next
			}
		}
		return m
	}
	return nil
}

func value(fams map[string]*dto.MetricFamily, name string, labels map[string]string) (float64, bool) {
	m := metric(fams, name, labels)
	switch {
	case m == nil:
		return 0, false
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue(), true
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue(), true
	}
	return 0, false
}

// TestHalfOpenIsNotOpen: an idle backend whose breaker waits half-open
// for a probe holds nothing back: sluice_breaker_open is 0, so the alert
// on it does not page for a backend that recovered.
func TestHalfOpenIsNotOpen(t *testing.T) {
	for state, want := range map[string]float64{"closed": 0, "half_open": 0, "open": 1} {
		st := workers.Status{Settings: workers.Settings{Concurrency: 1, Burst: 1}, State: workers.State{Breaker: state, Share: 1}}
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(newCollector(Sources{Backends: &fakeBackends{names: []string{"b"}, status: func(string) (workers.Status, bool) { return st, true }}}))
		got, err := testutil.GatherAndCount(reg, "sluice_breaker_open")
		if err != nil || got != 1 {
			t.Fatalf("%s: %d series, %v", state, got, err)
		}
		mfs, _ := reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() == "sluice_breaker_open" {
				if v := mf.GetMetric()[0].GetGauge().GetValue(); v != want {
					t.Fatalf("%s: sluice_breaker_open %v, want %v", state, v, want)
				}
			}
		}
	}
}

// TestQueueOnly: a process without the worker role exports each
// backend's queue series and none of the pool's, which would add a
// phantom worker to every sum across processes.
func TestQueueOnly(t *testing.T) {
	src := sources(t)
	src.QueueOnly = true
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(newCollector(src))
	for name, want := range map[string]int{"sluice_queue_depth": 2, "sluice_backlog_seconds": 2, "sluice_backend_concurrency": 0,
		"sluice_in_flight": 0, "sluice_breaker_open": 0, "sluice_deliveries_total": 0, "sluice_delivery_duration_seconds": 0} {
		if got, err := testutil.GatherAndCount(reg, name); err != nil || got != want {
			t.Errorf("%s: %d series (%v), want %d", name, got, err, want)
		}
	}
}
