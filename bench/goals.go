package main

import (
	"fmt"
	"math"
)

// cmp is how a goal compares its figure with the wanted value.
type cmp string

const (
	atLeast cmp = ">="
	atMost  cmp = "<="
	below   cmp = "<"
	within  cmp = "±" // |figure| <= want
)

// A goal is one row of the goal table: a figure of a part, alone or as a
// ratio to a baseline measured in the same run, and the value wanted.
//
// A gate goal sits under what the bench measured when the goal was set
// (README), with margin for a noisy shared machine: missing it is a
// regression and fails the run. An aim is a target sluice does not reach
// yet; it is shown and never fails the run.
type goal struct {
	part     string // the part (-only name) that measures the figure
	what     string // the figure as a reader names it
	figure   string // its key in the report's figures
	baseline string // what it is compared with; "" for an absolute figure
	base     string // the baseline's key: the value compared is figure/base
	cmp      cmp
	want     float64
	unit     string // "x" for ratios, else the figure's unit; "bool" for 1/0
	aim      bool
}

// goals is the goal table. Gates were set from the README's figures of a
// quiet run (in parentheses); aims are the targets the README names.
var goals = append([]goal{
	// The submit path with the embedded broker against a bare fasthttp
	// server that stores nothing (with group commit 0.42-0.52x; 0.28x
	// before it).
	{part: "ingest", what: "sluice embedded durable req/s", figure: "ingest.durable.rps",
		baseline: "bare fasthttp req/s", base: "ingest.bare.rps", cmp: atLeast, want: 0.3, unit: "x"},
	{part: "ingest", what: "sluice embedded durable req/s", figure: "ingest.durable.rps",
		baseline: "bare fasthttp req/s", base: "ingest.bare.rps", cmp: atLeast, want: 0.5, unit: "x", aim: true},
	// (1.0-1.5x)
	{part: "ingest", what: "sluice embedded durable p99", figure: "ingest.durable.p99_ms",
		baseline: "bare fasthttp p99", base: "ingest.bare.p99_ms", cmp: below, want: 3, unit: "x"},
	{part: "ingest", what: "sluice embedded durable p99", figure: "ingest.durable.p99_ms",
		baseline: "bare fasthttp p99", base: "ingest.bare.p99_ms", cmp: below, want: 2, unit: "x", aim: true},
	// (0.29-0.34x)
	{part: "ingest", what: "sluice embedded durable req/s", figure: "ingest.durable.rps",
		baseline: "raw JetStream msg/s", base: "ingest.jetstream.rps", cmp: atLeast, want: 0.14, unit: "x"},
	// fsync before every confirm: one per group since group commit (0.6x;
	// 0.16x before it).
	{part: "ingest", what: "sync: always req/s", figure: "ingest.sync_always.rps",
		baseline: "sync: 1s (durable) req/s", base: "ingest.durable.rps", cmp: atLeast, want: 0.3, unit: "x"},
	// Answering before the write gains little: the path is CPU-bound
	// (1.09-1.12x).
	{part: "ingest", what: "ack: fast req/s", figure: "ingest.fast.rps",
		baseline: "ack: durable req/s", base: "ingest.durable.rps", cmp: atLeast, want: 0.9, unit: "x"},
	{part: "ingest", what: "ack: fast req/s", figure: "ingest.fast.rps",
		baseline: "ack: durable req/s", base: "ingest.durable.rps", cmp: atLeast, want: 1.3, unit: "x", aim: true},
	// CPU per accepted request, sluice's process alone (25-42 µs; 46 µs
	// before group commit).
	{part: "ingest", what: "sluice embedded durable CPU/req", figure: "ingest.durable.cpu_us",
		cmp: atMost, want: 50, unit: "µs"},
	{part: "ingest", what: "sluice embedded durable CPU/req", figure: "ingest.durable.cpu_us",
		cmp: atMost, want: 15, unit: "µs", aim: true},
	// Gateway policies cost little: API-key auth, a client rate limit
	// and CORS on, against the same config without them, the same
	// requests sent to both (0.92-1.00x).
	{part: "policies", what: "ingest with auth, rate limit, CORS", figure: "policies.on.rps",
		baseline: "the same without them", base: "policies.off.rps", cmp: atLeast, want: 0.85, unit: "x"},
	{part: "policies", what: "ingest with auth, rate limit, CORS", figure: "policies.on.rps",
		baseline: "the same without them", base: "policies.off.rps", cmp: atLeast, want: 0.9, unit: "x", aim: true},
	// Prometheus metrics cost ingest nothing per request: every series is
	// read at scrape time (issue 12). /metrics scraped every second
	// against metrics: false, the same requests sent to both (0.90-1.03x;
	// two identical processes read 0.89-1.02x on a busy machine, so the
	// gate sits under that noise and the CPU goal below is the cost).
	{part: "metrics", what: "ingest with /metrics scraped every 1s", figure: "metrics.on.rps",
		baseline: "metrics: false", base: "metrics.off.rps", cmp: atLeast, want: 0.85, unit: "x"},
	{part: "metrics", what: "ingest with /metrics scraped every 1s", figure: "metrics.on.rps",
		baseline: "metrics: false", base: "metrics.off.rps", cmp: atLeast, want: 0.97, unit: "x", aim: true},
	// The same as CPU, which a busy machine moves less: one scrape's CPU
	// against a second of ingest at full load.
	{part: "metrics", what: "CPU of a scrape a second, of ingest's", figure: "metrics.scrape_cpu_pct",
		cmp: atMost, want: 3, unit: "%"},
	// The same at 256 connections (0.54-0.60x, p99 1.4-1.5x).
	{part: "ingest", what: "durable req/s, 256 conns", figure: "ingest.durable256.rps",
		baseline: "bare fasthttp, 256 conns", base: "ingest.bare256.rps", cmp: atLeast, want: 0.35, unit: "x"},
	{part: "ingest", what: "durable req/s, 256 conns", figure: "ingest.durable256.rps",
		baseline: "bare fasthttp, 256 conns", base: "ingest.bare256.rps", cmp: atLeast, want: 0.5, unit: "x", aim: true},
	{part: "ingest", what: "durable p99, 256 conns", figure: "ingest.durable256.p99_ms",
		baseline: "bare fasthttp p99, 256 conns", base: "ingest.bare256.p99_ms", cmp: below, want: 3, unit: "x"},
	{part: "ingest", what: "durable p99, 256 conns", figure: "ingest.durable256.p99_ms",
		baseline: "bare fasthttp p99, 256 conns", base: "ingest.bare256.p99_ms", cmp: below, want: 2, unit: "x", aim: true},

	{part: "rate", what: "delivered/s off the rate 100/s", figure: "rate.deviation_pct",
		cmp: within, want: 3, unit: "%"},
	{part: "rate", what: "100 ms windows outside 10±1", figure: "rate.windows_outside",
		cmp: atMost, want: 0, unit: ""},

	// The retry budget allows 20/s: each success takes 2 attempts at rate 40.
	{part: "retries", what: "successes/s", figure: "retries.successes_per_s",
		cmp: atLeast, want: 19, unit: "/s"},

	// (120-210 µs)
	{part: "cpu", what: "sluice CPU per delivered message", figure: "cpu.us_per_delivery",
		cmp: atMost, want: 300, unit: "µs"},

	{part: "overload", what: "excess refused with 503", figure: "overload.refused",
		cmp: atLeast, want: 1, unit: ""},
	{part: "overload", what: "peak RSS", figure: "overload.peak_rss_mib",
		cmp: below, want: 1024, unit: "MiB"},
	{part: "overload", what: "healthy afterwards", figure: "overload.alive",
		cmp: atLeast, want: 1, unit: "bool"},

	// (1.2-1.56x with group commit; 0.52-0.82x before it)
	{part: "kafka", what: "sluice kafka durable req/s", figure: "kafka.sluice.rps",
		baseline: "raw kafka-go msg/s", base: "kafka.raw.rps", cmp: atLeast, want: 0.8, unit: "x"},
	// Group commit: requests arriving together share a broker write, so
	// sluice must beat a publisher paying one message per request.
	{part: "kafka", what: "sluice kafka durable req/s", figure: "kafka.sluice.rps",
		baseline: "raw kafka-go msg/s", base: "kafka.raw.rps", cmp: atLeast, want: 2, unit: "x", aim: true},
	// (9.84 ms)
	{part: "kafka", what: "sluice kafka durable p99", figure: "kafka.sluice.p99_ms",
		cmp: below, want: 20, unit: "ms"},
	{part: "kafka", what: "sluice kafka durable p99", figure: "kafka.sluice.p99_ms",
		cmp: below, want: 10, unit: "ms", aim: true},
	// (0.21x in a quiet run, 0.08-0.11x in others; needs the ingest part in
	// the same run). 0.15x is an aim, not a gate: kfake, sharing the two cores with
	// sluice and the load, bounds it more than sluice does; the raw-client
	// ratio above is the real gate, this one only catches a collapse.
	{part: "kafka", what: "sluice kafka durable req/s", figure: "kafka.sluice.rps",
		baseline: "bare fasthttp req/s", base: "ingest.bare.rps", cmp: atLeast, want: 0.05, unit: "x"},
	{part: "kafka", what: "sluice kafka durable req/s", figure: "kafka.sluice.rps",
		baseline: "bare fasthttp req/s", base: "ingest.bare.rps", cmp: atLeast, want: 0.15, unit: "x", aim: true},

	// (0.84-1.02x with group commit; 0.38-0.56x before it)
	{part: "rabbitmq", what: "sluice rabbitmq durable req/s", figure: "rabbitmq.sluice.rps",
		baseline: "raw amqp091 msg/s", base: "rabbitmq.raw.rps", cmp: atLeast, want: 0.6, unit: "x"},
	{part: "rabbitmq", what: "sluice rabbitmq durable req/s", figure: "rabbitmq.sluice.rps",
		baseline: "raw amqp091 msg/s", base: "rabbitmq.raw.rps", cmp: atLeast, want: 2, unit: "x", aim: true},
	// (32.96 ms)
	{part: "rabbitmq", what: "sluice rabbitmq durable p99", figure: "rabbitmq.sluice.p99_ms",
		cmp: below, want: 60, unit: "ms"},
	{part: "rabbitmq", what: "sluice rabbitmq durable p99", figure: "rabbitmq.sluice.p99_ms",
		cmp: below, want: 10, unit: "ms", aim: true},

	// Delivery at rate 200: a backlog waiting must not make a delivery cost
	// more than one submitted at the rate (which pays for its submit too:
	// 0.73-0.89x after the fix of issue 10); and a delivery at a set rate
	// costs 775-1134 µs of CPU (embedded, Kafka, RabbitMQ; 1115-1206 µs on
	// Kafka before it), 5x what it costs unthrottled (the cpu part).

	// The soak (run only with -only soak): once the first ttl window is
	// over, records expire as fast as they come, so RSS and the result
	// store's disk stay flat instead of growing with traffic × ttl.
	{part: "soak", what: "RSS growth after the first ttl window", figure: "soak.rss_growth_pct",
		cmp: atMost, want: 20, unit: "%"},
	{part: "soak", what: "result store disk growth after the first ttl window", figure: "soak.disk_growth_pct",
		cmp: atMost, want: 20, unit: "%"},
}, append(deliveryGoals("embedded", "kafka", "rabbitmq"), scaleGoals("kafka", "rabbitmq")...)...)

// scaleGoals are the scale part's goals (run only with -only scale): a
// backend's rate holds in total across 1-3 worker processes, each taking
// its share (-0.8% to -0.0% measured; 5% leaves room for a busy machine).
func scaleGoals(brokers ...string) []goal {
	var out []goal
	for _, k := range brokers {
		for n := 1; n <= scaleMaxProcs; n++ {
			out = append(out, goal{part: "scale", what: fmt.Sprintf("%s rate %d held by %d worker process(es)", k, scaleRate, n),
				figure: fmt.Sprintf("scale.%s.delivery.n%d.rate_deviation_pct", k, n), cmp: within, want: 5, unit: "%"})
		}
	}
	return out
}

// deliveryGoals are the delivery part's goals, the same for each broker.
func deliveryGoals(brokers ...string) []goal {
	var out []goal
	for _, k := range brokers {
		what, figure := k+" µs/delivery, backlog", "delivery."+k+".backlog.us_per_delivery"
		out = append(out,
			goal{part: "delivery", what: what, figure: figure,
				baseline: "no backlog", base: "delivery." + k + ".steady.us_per_delivery", cmp: atMost, want: 1.5, unit: "x"},
			// The same binary measured 995-1610 µs on the embedded broker
			// from one run to the next (1164-1539 µs at 15ecb93, 1284
			// µs for bf67fad in the same hour): the gate sits above that.
			goal{part: "delivery", what: what, figure: figure, cmp: atMost, want: 2000, unit: "µs"},
			goal{part: "delivery", what: what, figure: figure, cmp: atMost, want: 400, unit: "µs", aim: true})
	}
	return out
}

// Results of a goal.
const (
	pass = "PASS"
	miss = "MISS"
	skip = "SKIP" // a figure is missing: its part was not run or was skipped
)

// A goalResult is a goal evaluated against one run's figures.
type goalResult struct {
	Part     string   `json:"part"`
	What     string   `json:"what"`
	Figure   string   `json:"figure"`
	Baseline string   `json:"baseline,omitempty"`
	Base     string   `json:"base,omitempty"`
	Measured *float64 `json:"measured"` // null when skipped or not comparable
	Cmp      string   `json:"cmp"`
	Want     float64  `json:"want"`
	Unit     string   `json:"unit"`
	Aim      bool     `json:"aim"`
	Result   string   `json:"result"`
}

// evaluate checks each goal against figures. A goal whose figure or
// baseline is missing is skipped; one whose baseline is zero (the baseline
// measured nothing) is missed.
func evaluate(gs []goal, figures map[string]float64) []goalResult {
	rs := make([]goalResult, 0, len(gs))
	for _, g := range gs {
		r := goalResult{Part: g.part, What: g.what, Figure: g.figure, Baseline: g.baseline, Base: g.base,
			Cmp: string(g.cmp), Want: g.want, Unit: g.unit, Aim: g.aim}
		v, ok := figures[g.figure]
		var b float64
		if ok && g.base != "" {
			b, ok = figures[g.base]
		}
		switch {
		case !ok:
			r.Result = skip
		case g.base != "" && b == 0:
			r.Result = miss
		default:
			if g.base != "" {
				v /= b
			}
			r.Measured = &v
			r.Result = miss
			if g.met(v) {
				r.Result = pass
			}
		}
		rs = append(rs, r)
	}
	return rs
}

func (g goal) met(v float64) bool {
	if math.IsNaN(v) {
		return false
	}
	switch g.cmp {
	case atLeast:
		return v >= g.want
	case atMost:
		return v <= g.want
	case below:
		return v < g.want
	case within:
		return math.Abs(v) <= g.want
	}
	panic(fmt.Sprintf("goal %s: unknown comparison %q", g.figure, g.cmp))
}

// missed reports whether a gate goal was missed.
func missed(rs []goalResult) bool {
	for _, r := range rs {
		if r.Result == miss && !r.Aim {
			return true
		}
	}
	return false
}
