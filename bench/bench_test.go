package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestEvaluate(t *testing.T) {
	figures := map[string]float64{
		"a.rps": 300, "base.rps": 1000, "zero.rps": 0,
		"p99_ms": 12, "dev_pct": -2.5, "alive": 1,
	}
	for _, tc := range []struct {
		name     string
		g        goal
		result   string
		measured float64 // when compared
	}{
		{"ratio met", goal{figure: "a.rps", base: "base.rps", cmp: atLeast, want: 0.2}, pass, 0.3},
		{"ratio missed", goal{figure: "a.rps", base: "base.rps", cmp: atLeast, want: 0.5}, miss, 0.3},
		{"ratio at the bound", goal{figure: "a.rps", base: "base.rps", cmp: atLeast, want: 0.3}, pass, 0.3},
		{"below met", goal{figure: "p99_ms", cmp: below, want: 20}, pass, 12},
		{"below at the bound", goal{figure: "p99_ms", cmp: below, want: 12}, miss, 12},
		{"at most at the bound", goal{figure: "p99_ms", cmp: atMost, want: 12}, pass, 12},
		{"within, negative", goal{figure: "dev_pct", cmp: within, want: 3}, pass, -2.5},
		{"within, outside", goal{figure: "dev_pct", cmp: within, want: 2}, miss, -2.5},
		{"bool", goal{figure: "alive", cmp: atLeast, want: 1, unit: "bool"}, pass, 1},
		{"figure missing", goal{figure: "nope", cmp: atLeast, want: 1}, skip, 0},
		{"baseline missing", goal{figure: "a.rps", base: "nope", cmp: atLeast, want: 1}, skip, 0},
		{"baseline zero", goal{figure: "a.rps", base: "zero.rps", cmp: atLeast, want: 1}, miss, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := evaluate([]goal{tc.g}, figures)[0]
			if r.Result != tc.result {
				t.Errorf("result = %s, want %s", r.Result, tc.result)
			}
			compared := tc.result != skip && !(tc.g.base == "zero.rps")
			if compared != (r.Measured != nil) {
				t.Fatalf("measured = %v, want it set: %v", r.Measured, compared)
			}
			if compared && *r.Measured != tc.measured {
				t.Errorf("measured = %v, want %v", *r.Measured, tc.measured)
			}
		})
	}
}

func TestMissedIgnoresAims(t *testing.T) {
	for _, tc := range []struct {
		name string
		rs   []goalResult
		want bool
	}{
		{"all passed", []goalResult{{Result: pass}, {Result: pass, Aim: true}}, false},
		{"aim missed", []goalResult{{Result: pass}, {Result: miss, Aim: true}}, false},
		{"skipped", []goalResult{{Result: skip}}, false},
		{"gate missed", []goalResult{{Result: miss}, {Result: pass, Aim: true}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := missed(tc.rs); got != tc.want {
				t.Errorf("missed = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestGoalTable checks the table's rows name known parts and comparisons,
// and that each aim has a gate on the same figure so a regression below
// today's figure still fails the run.
func TestGoalTable(t *testing.T) {
	known := map[string]bool{}
	for _, p := range parts {
		known[p.name] = true
	}
	gated := map[string]bool{}
	for _, g := range goals {
		if !g.aim {
			gated[g.figure+"/"+g.base] = true
		}
	}
	for _, g := range goals {
		if !known[g.part] {
			t.Errorf("goal %q: unknown part %q", g.what, g.part)
		}
		for _, key := range []string{g.figure, g.base} {
			if p, _, _ := strings.Cut(key, "."); key != "" && !known[p] {
				t.Errorf("goal %q: figure %q is not a part's", g.what, key)
			}
		}
		if g.base != "" && g.unit != "x" {
			t.Errorf("goal %q: a ratio's unit is x, not %q", g.what, g.unit)
		}
		switch g.cmp {
		case atLeast, atMost, below, within:
		default:
			t.Errorf("goal %q: unknown comparison %q", g.what, g.cmp)
		}
		if g.aim && !gated[g.figure+"/"+g.base] {
			t.Errorf("aim %q has no gate on the same figure", g.what)
		}
	}
}

func TestSelectParts(t *testing.T) {
	all, err := selectParts("")
	if err != nil || len(all) != len(parts)-2 {
		t.Fatalf("selectParts(\"\") = %d parts, %v, want all but soak and scale", len(all), err)
	}
	for _, p := range all {
		if p.name == "soak" || p.name == "scale" {
			t.Fatalf("%s runs by default; it should run only when named", p.name)
		}
	}
	if sel, err := selectParts("soak"); err != nil || len(sel) != 1 || sel[0].name != "soak" {
		t.Fatalf("selectParts(\"soak\") = %v, %v", sel, err)
	}
	sel, err := selectParts("kafka, ingest")
	if err != nil {
		t.Fatal(err)
	}
	if len(sel) != 2 || sel[0].name != "ingest" || sel[1].name != "kafka" {
		t.Errorf("selectParts = %v, want ingest then kafka", sel)
	}
	for _, bad := range []string{"ingest,nope", ","} {
		if _, err := selectParts(bad); err == nil {
			t.Errorf("selectParts(%q): no error", bad)
		}
	}
}

func TestFormat(t *testing.T) {
	for _, tc := range []struct {
		v    float64
		unit string
		want string
	}{
		{0.284, "x", "0.28x"},
		{9.841, "ms", "9.84 ms"},
		{122.4, "µs", "122 µs"},
		{19.96, "/s", "20.0/s"},
		{-0.5, "%", "-0.50 %"},
		{85.6, "MiB", "86 MiB"},
		{41913, "", "41913"},
		{1, "bool", "yes"},
		{0, "bool", "no"},
	} {
		if got := formatValue(tc.v, tc.unit); got != tc.want {
			t.Errorf("formatValue(%v, %q) = %q, want %q", tc.v, tc.unit, got, tc.want)
		}
	}
	for _, tc := range []struct {
		g    goalResult
		want string
	}{
		{goalResult{Cmp: ">=", Want: 0.2, Unit: "x"}, ">= 0.2x"},
		{goalResult{Cmp: "<", Want: 20, Unit: "ms"}, "< 20 ms"},
		{goalResult{Cmp: "±", Want: 3, Unit: "%"}, "within ±3 %"},
		{goalResult{Cmp: "<=", Want: 0, Unit: ""}, "<= 0"},
		{goalResult{Cmp: ">=", Want: 19, Unit: "/s"}, ">= 19/s"},
		{goalResult{Cmp: ">=", Want: 1, Unit: "bool"}, "yes"},
	} {
		if got := formatGoal(tc.g); got != tc.want {
			t.Errorf("formatGoal(%+v) = %q, want %q", tc.g, got, tc.want)
		}
	}
}

// sampleReport is a report as after a run of ingest (with one gate missed)
// and a skipped rabbitmq.
func sampleReport(t *testing.T) *report {
	t.Helper()
	rep := newReport(environment{Cores: 2, Go: "go1.x", Duration: "5s", Conns: 64, Parts: []string{"ingest", "rabbitmq"}})
	r := loadResult{calls: 4, byStatus: map[int]int{202: 3, 503: 1}, errors: 2, elapsed: 2 * time.Second,
		latencies: []time.Duration{time.Millisecond, 2 * time.Millisecond, 3 * time.Millisecond}, cpu: 400 * time.Microsecond}
	rep.add(newMeasurement("ingest", "durable", "sluice, embedded, ack: durable", "req/s", 64, r))
	rep.figure("ingest.bare.rps", 20)
	rep.figure("ingest.nan", math.NaN())
	rep.Skipped["rabbitmq"] = "skipped: no RabbitMQ"
	rep.finish([]goal{
		{part: "ingest", what: "durable", figure: "ingest.durable.rps", baseline: "bare", base: "ingest.bare.rps", cmp: atLeast, want: 0.2, unit: "x"},
		{part: "ingest", what: "durable", figure: "ingest.durable.rps", baseline: "bare", base: "ingest.bare.rps", cmp: atLeast, want: 0.5, unit: "x", aim: true},
		{part: "ingest", what: "durable p99", figure: "ingest.durable.p99_ms", cmp: below, want: 2, unit: "ms"},
		{part: "rabbitmq", what: "rabbit", figure: "rabbitmq.sluice.rps", base: "rabbitmq.raw.rps", cmp: atLeast, want: 0.3, unit: "x"},
	})
	return rep
}

func TestReportFigures(t *testing.T) {
	rep := sampleReport(t)
	m := rep.Measurements[0]
	if m.Rate != 2 || m.OK != 3 || m.Non2xx != 1 || m.Errors != 2 || m.P50ms != 2 || m.P99ms != 3 || m.CPUusCall != 100 {
		t.Errorf("measurement = %+v", m)
	}
	for k, want := range map[string]float64{"ingest.durable.rps": 2, "ingest.durable.p50_ms": 2,
		"ingest.durable.p99_ms": 3, "ingest.durable.cpu_us": 100} {
		if got, ok := rep.Figures[k]; !ok || got != want {
			t.Errorf("figure %s = %v (%v), want %v", k, got, ok, want)
		}
	}
	if _, ok := rep.Figures["ingest.nan"]; ok {
		t.Error("a NaN figure was kept")
	}
	if rep.Pass || !rep.failed() {
		t.Error("a missed gate did not fail the report")
	}
}

func TestWriteGoals(t *testing.T) {
	var buf bytes.Buffer
	if err := writeGoals(&buf, sampleReport(t)); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{
		"PART", "COMPARED WITH", "RESULT",
		"0.10x", ">= 0.2x", "MISS", "aim, not yet",
		"3.00 ms", "< 2 ms",
		"SKIP",
		"3 goals: 0 passed, 2 missed, 1 skipped; 0 of 1 aims met",
		"rabbitmq: skipped: no RabbitMQ",
		"FAIL",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("goal table lacks %q:\n%s", want, out)
		}
	}
}

func TestWriteJSON(t *testing.T) {
	var buf bytes.Buffer
	if err := writeJSON(&buf, sampleReport(t)); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Env          environment
		Measurements []map[string]any
		Figures      map[string]float64
		Goals        []map[string]any
		Skipped      map[string]string
		Pass         *bool
	}
	dec := json.NewDecoder(&buf)
	if err := dec.Decode(&doc); err != nil {
		t.Fatal(err)
	}
	if dec.More() {
		t.Error("more than one JSON document")
	}
	if doc.Pass == nil || *doc.Pass {
		t.Errorf("pass = %v, want false", doc.Pass)
	}
	if doc.Env.Conns != 64 || len(doc.Measurements) != 1 || doc.Figures["ingest.durable.rps"] != 2 {
		t.Errorf("document = %+v", doc)
	}
	if m := doc.Measurements[0]; m["label"] != "sluice, embedded, ack: durable" || m["p99_ms"] != 3.0 || m["cpu_us_per_call"] != 100.0 {
		t.Errorf("measurement = %v", m)
	}
	if len(doc.Goals) != 4 {
		t.Fatalf("%d goals, want 4", len(doc.Goals))
	}
	g := doc.Goals[0]
	if g["result"] != "MISS" || g["measured"] != 0.1 || g["cmp"] != ">=" || g["want"] != 0.2 || g["aim"] != false {
		t.Errorf("goal = %v", g)
	}
	if g := doc.Goals[3]; g["result"] != "SKIP" || g["measured"] != nil {
		t.Errorf("skipped goal = %v", g)
	}
	if doc.Skipped["rabbitmq"] == "" {
		t.Error("skipped part missing")
	}
}

func TestClosedLoopBounds(t *testing.T) {
	var n atomic.Int64
	r := closedLoop(4, time.Minute, 100, func() (int, error) {
		switch n.Add(1) % 10 {
		case 0:
			return 0, errors.New("no answer")
		case 1:
			return 503, nil
		}
		return 202, nil
	})
	if got := r.calls + r.errors; got != 100 {
		t.Errorf("%d calls and errors, want 100 (the count bound)", got)
	}
	if r.errors != 10 || r.byStatus[503] != 10 || r.byStatus[202] != 80 || r.ok() != 80 {
		t.Errorf("errors %d, by status %v, ok %d", r.errors, r.byStatus, r.ok())
	}
	if r.pct(0.5) > r.pct(0.99) {
		t.Error("latencies not sorted")
	}

	start := time.Now()
	r = closedLoop(2, 50*time.Millisecond, 0, func() (int, error) { time.Sleep(time.Millisecond); return 200, nil })
	if el := time.Since(start); el > 5*time.Second || r.calls == 0 {
		t.Errorf("time-bounded loop: %d calls in %s", r.calls, el)
	}
}

func TestMeasureCPU(t *testing.T) {
	var cpu time.Duration
	spec := loadSpec{conns: 1, dur: time.Minute, maxCalls: 10, warmup: time.Millisecond,
		cpu: func() time.Duration { cpu += 5 * time.Millisecond; return cpu }}
	r := measure(spec, func() (int, error) { return 202, nil })
	if r.calls != 10 || r.cpu != 5*time.Millisecond || r.cpuPerCall() != 500*time.Microsecond {
		t.Errorf("calls %d, cpu %s, per call %s", r.calls, r.cpu, r.cpuPerCall())
	}
}

func TestSmoothness(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var ts []time.Time
	for i := range 400 { // 100/s for 4 s, evenly
		ts = append(ts, t0.Add(time.Duration(i)*10*time.Millisecond))
	}
	perSec, windows := smoothness(ts, 2)
	if perSec != 100 || len(windows) != 20 {
		t.Fatalf("perSec %v, %d windows", perSec, len(windows))
	}
	for i, w := range windows {
		if w != 10 {
			t.Errorf("window %d holds %d, want 10", i, w)
		}
	}
	if perSec, _ := smoothness(nil, 2); perSec != 0 {
		t.Errorf("no times: %v/s", perSec)
	}
}
