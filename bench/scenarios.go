package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sluice-gw/sluice/broker/rabbitmq"
)

// errSkipped marks a part that could not run here (a service is missing):
// its goals are skipped, and the run does not fail for it.
var errSkipped = errors.New("skipped")

// A part is one scenario of the bench; name is what -only selects.
type part struct {
	name string
	run  func(b *bench) error
	// long parts run only when -only names them.
	long bool
}

var parts = []part{
	{name: "ingest", run: ingest},
	{name: "rate", run: rate},
	{name: "retries", run: retries},
	{name: "cpu", run: cpuPerDelivery},
	{name: "overload", run: overload},
	{name: "kafka", run: kafka},
	{name: "rabbitmq", run: rabbitMQ},
	{name: "delivery", run: delivery},
	{name: "policies", run: policies},
	{name: "metrics", run: metricsCost},
	{name: "soak", run: soak, long: true},
	{name: "scale", run: scale, long: true},
}

// selectParts returns the parts named in only (comma-separated), in the
// bench's order; all of them for "".
func selectParts(only string) ([]part, error) {
	if only == "" {
		var sel []part
		for _, p := range parts {
			if !p.long {
				sel = append(sel, p)
			}
		}
		return sel, nil
	}
	want := map[string]bool{}
	for n := range strings.SplitSeq(only, ",") {
		if n = strings.TrimSpace(n); n != "" {
			want[n] = true
		}
	}
	var sel []part
	for _, p := range parts {
		if want[p.name] {
			sel = append(sel, p)
			delete(want, p.name)
		}
	}
	for n := range want {
		return nil, fmt.Errorf("-only: no part %q", n)
	}
	if len(sel) == 0 {
		return nil, errors.New("-only: no part named")
	}
	return sel, nil
}

// bench is what the parts share: where they print, the report they record
// into, the delivery sink, and the load settings.
type bench struct {
	log   io.Writer
	rep   *report
	sink  *sink
	bin   string // the sluice binary
	conns int
	dur   time.Duration
}

// spec is the ingest measurement: b.conns connections for b.dur after a
// second of warm-up.
func (b *bench) spec(cpu func() time.Duration) loadSpec {
	return loadSpec{conns: b.conns, dur: b.dur, warmup: time.Second, cpu: cpu}
}

// measure runs o under spec, records the measurement, and prints its row.
func (b *bench) measure(part, name, label, unit string, spec loadSpec, o op) loadResult {
	r := measure(spec, o)
	m := newMeasurement(part, name, label, unit, spec.conns, r)
	b.rep.add(m)
	fmt.Fprintln(b.log, m.row())
	return r
}

func (b *bench) startSluice(cfg sluiceConfig) (*sluiceProc, error) {
	return startSluice(b.bin, b.sink.url, cfg)
}

// sluiceIngest measures sluice's submit path alone: deliveries paused, 1 KiB
// POSTs answered 202 once the broker configured by cfg has the request.
// With -profile it writes a CPU profile of the measured run.
func (b *bench) sluiceIngest(part, name, label string, cfg sluiceConfig) error {
	if *profileDir != "" {
		cfg.top += "\nadmin_pprof: true"
	}
	p, err := b.startSluice(cfg)
	if err != nil {
		return err
	}
	defer p.stop()
	p.pause(true)
	spec := b.spec(p.cpu)
	var prof chan error
	if *profileDir != "" {
		prof = make(chan error, 1)
		go func() {
			time.Sleep(spec.warmup) // the measured run only
			prof <- p.profile(filepath.Join(*profileDir, part+"-"+name+".pprof"), max(time.Second, spec.dur-time.Second))
		}()
	}
	b.measure(part, name, label, "req/s", spec, post(p.addr, "/v1/logs", b.conns))
	if prof != nil {
		if err := <-prof; err != nil {
			fmt.Fprintf(b.log, "  profile: %v\n", err)
		}
	}
	return nil
}

func ingest(b *bench) error {
	fmt.Fprintln(b.log, "== ingest: POST 1 KiB JSON -> 202, closed loop")
	bare, err := startChild("-bare-server", "127.0.0.1:0")
	if err != nil {
		return err
	}
	b.measure("ingest", "bare", "bare fasthttp answering 202", "req/s", b.spec(bare.cpu), post(bare.addr, "/v1/logs", b.conns))
	bare.stop()

	for _, v := range []struct {
		name, label string
		cfg         sluiceConfig
	}{
		{"durable", "sluice, embedded, ack: durable", sluiceConfig{top: "ack: durable", backend: "concurrency: 16"}},
		{"fast", "sluice, embedded, ack: fast", sluiceConfig{top: "ack: fast", backend: "concurrency: 16"}},
		// The default fsyncs every second; always fsyncs before each
		// confirm, so a 202 survives a power loss too, at a cost this row
		// shows.
		{"sync_always", "sluice, embedded, durable, sync: always",
			sluiceConfig{top: "ack: durable", backend: "concurrency: 16", embedded: "sync: always"}},
	} {
		if err := b.sluiceIngest("ingest", v.name, v.label, v.cfg); err != nil {
			return err
		}
	}

	// Four times the connections: group commit packs more per write, and
	// the p99 must stay within twice bare's.
	wide := *b
	wide.conns = 4 * b.conns
	bare, err = startChild("-bare-server", "127.0.0.1:0")
	if err != nil {
		return err
	}
	wide.measure("ingest", "bare256", fmt.Sprintf("bare fasthttp, %d connections", wide.conns), "req/s",
		wide.spec(bare.cpu), post(bare.addr, "/v1/logs", wide.conns))
	bare.stop()
	if err := wide.sluiceIngest("ingest", "durable256", fmt.Sprintf("sluice, embedded, durable, %d connections", wide.conns),
		sluiceConfig{top: "ack: durable", backend: "concurrency: 16"}); err != nil {
		return err
	}

	js, closeJS, err := jetStreamPublish()
	if err != nil {
		return err
	}
	defer closeJS()
	b.measure("ingest", "jetstream", "raw JetStream async publish", "msg/s", b.spec(nil), js)
	fmt.Fprintln(b.log)
	return nil
}

func rate(b *bench) error {
	const rate, secs = 100, 10
	fmt.Fprintf(b.log, "== rate: deliveries at rate %d/s, burst 1, concurrency 16, %d s\n", rate, secs)
	b.sink.reset(false)
	p, err := b.startSluice(sluiceConfig{backend: fmt.Sprintf("rate: %d\nburst: 1\nconcurrency: 16", rate)})
	if err != nil {
		return err
	}
	defer p.stop()
	p.pause(true)
	p.submitN(rate*secs + 300)
	p.pause(false)
	time.Sleep(secs*time.Second + 500*time.Millisecond) // the measured span
	ts := b.sink.successes()
	if len(ts) == 0 {
		return errors.New("no deliveries")
	}
	// Skip the first second (start-up), measure the next secs-2 seconds.
	got, windows := smoothness(ts, secs-2)
	outside := 0
	for _, w := range windows {
		if w < rate/10-1 || w > rate/10+1 {
			outside++
		}
	}
	dev := (got - rate) / rate * 100
	b.rep.figure("rate.delivered_per_s", got)
	b.rep.figure("rate.deviation_pct", dev)
	b.rep.figure("rate.windows_outside", float64(outside))
	fmt.Fprintf(b.log, "  delivered %.1f/s (%+.2f%%)\n", got, dev)
	fmt.Fprintf(b.log, "  100 ms windows: min %d, max %d; %d of %d hold %d±1\n\n",
		slices.Min(windows), slices.Max(windows), len(windows)-outside, len(windows), rate/10)
	return nil
}

// smoothness counts the times ts in 100 ms windows over span seconds,
// starting a second after the first (start-up left out), and returns the
// rate per second over the span.
func smoothness(ts []time.Time, span int) (perSec float64, windows []int) {
	windows = make([]int, span*10)
	if len(ts) == 0 {
		return 0, windows
	}
	start := ts[0].Add(time.Second)
	end := start.Add(time.Duration(span) * time.Second)
	total := 0
	for _, t := range ts {
		if t.Before(start) || !t.Before(end) {
			continue
		}
		windows[int(t.Sub(start)/(100*time.Millisecond))]++
		total++
	}
	return float64(total) / float64(span), windows
}

func retries(b *bench) error {
	const n = 200
	fmt.Fprintf(b.log, "== retries: rate 40, concurrency 4, 503 on every first attempt, %d requests (breaker off: every first attempt failing would open it)\n", n)
	b.sink.reset(true)
	p, err := b.startSluice(sluiceConfig{backend: "rate: 40\nburst: 1\nconcurrency: 4\n" +
		"retry: { initial_backoff: 100ms, max_backoff: 1s }\nbreaker: { failures: 0 }"})
	if err != nil {
		return err
	}
	defer p.stop()
	p.pause(true)
	p.submitN(n)
	t0 := time.Now()
	p.pause(false)
	waitFor(time.Minute, 10*time.Millisecond, func() bool { return b.sink.count() >= n })
	ts := b.sink.successes()
	done, secs := len(ts), time.Since(t0).Seconds()
	if done >= n {
		done, secs = n, ts[n-1].Sub(t0).Seconds()
	}
	got := float64(done) / secs
	b.rep.figure("retries.succeeded", float64(done))
	b.rep.figure("retries.successes_per_s", got)
	fmt.Fprintf(b.log, "  %d of %d succeeded in %.1f s: %.1f successes/s (the budget allows 20: each takes 2 attempts)\n\n",
		done, n, secs, got)
	return nil
}

func cpuPerDelivery(b *bench) error {
	const n = 5000
	fmt.Fprintf(b.log, "== cpu: %d deliveries, no rate limit, concurrency 32\n", n)
	b.sink.reset(false)
	p, err := b.startSluice(sluiceConfig{backend: "concurrency: 32"})
	if err != nil {
		return err
	}
	defer p.stop()
	p.pause(true)
	p.submitN(n)
	time.Sleep(500 * time.Millisecond) // let the submits' work settle before counting CPU
	c0, t0 := p.cpu(), time.Now()
	p.pause(false)
	waitFor(2*time.Minute, 20*time.Millisecond, func() bool { return b.sink.count() >= n })
	el := time.Since(t0)
	time.Sleep(300 * time.Millisecond) // let the collector store the last outcomes
	used := p.cpu() - c0
	got := b.sink.count()
	perMsg := us(used) / float64(max(got, 1))
	b.rep.figure("cpu.delivered", float64(got))
	b.rep.figure("cpu.delivered_per_s", float64(got)/el.Seconds())
	b.rep.figure("cpu.us_per_delivery", perMsg)
	fmt.Fprintf(b.log, "  %d delivered in %.2f s (%.0f/s); sluice used %.2f s CPU: %.0f µs CPU per delivered message (fetch, HTTP, result event, store, ack)\n\n",
		got, el.Seconds(), float64(got)/el.Seconds(), used.Seconds(), perMsg)
	return nil
}

func overload(b *bench) error {
	c := b.conns * 10
	fmt.Fprintf(b.log, "== overload: %d connections against a backend draining 500/s with max_backlog 5000, %s\n", c, b.dur)
	b.sink.reset(false)
	p, err := b.startSluice(sluiceConfig{top: "max_inflight: 512", backend: "rate: 500\nburst: 50\nmax_backlog: 5000"})
	if err != nil {
		return err
	}
	defer p.stop()
	rss0 := p.rss()
	peak := rss0
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				peak = max(peak, p.rss())
			}
		}
	})
	r := b.measure("overload", "offered", fmt.Sprintf("offered load, %d connections", c), "req/s",
		loadSpec{conns: c, dur: b.dur, cpu: p.cpu}, post(p.addr, "/v1/logs", c))
	close(stop)
	wg.Wait()
	alive := p.alive()
	other := r.calls - r.byStatus[202] - r.byStatus[503]
	b.rep.figure("overload.accepted", float64(r.byStatus[202]))
	b.rep.figure("overload.refused", float64(r.byStatus[503]))
	b.rep.figure("overload.other", float64(other))
	b.rep.figure("overload.rss_idle_mib", rss0)
	b.rep.figure("overload.peak_rss_mib", peak)
	b.rep.figure("overload.alive", boolFigure(alive))
	fmt.Fprintf(b.log, "  offered %.0f req/s: %d accepted (202), %d refused (503), %d other, %d transport errors\n",
		r.rps(), r.byStatus[202], r.byStatus[503], other, r.errors)
	fmt.Fprintf(b.log, "  RSS %.0f MiB idle, %.0f MiB peak; still serving afterwards: %v\n\n", rss0, peak, alive)
	return nil
}

func boolFigure(ok bool) float64 {
	if ok {
		return 1
	}
	return 0
}

func kafka(b *bench) error {
	var addr string
	if env := os.Getenv("KAFKA_BROKERS"); env != "" {
		addr, _, _ = strings.Cut(env, ",")
		fmt.Fprintf(b.log, "== kafka: ingest through Kafka at %s, 1 KiB JSON\n", addr)
	} else {
		fmt.Fprintln(b.log, "== kafka: ingest through Kafka (kfake in its own process), 1 KiB JSON")
		k, err := startChild("-kfake-server")
		if err != nil {
			return err
		}
		defer k.stop()
		addr = k.addr
	}
	w, closeW, err := kafkaWrite(addr)
	if err != nil {
		return err
	}
	b.measure("kafka", "raw", "raw kafka-go writer, same batching", "msg/s", b.spec(nil), w)
	closeW()
	err = b.sluiceIngest("kafka", "sluice", "sluice, kafka, ack: durable", sluiceConfig{
		top: "ack: durable", backend: "concurrency: 16",
		broker: fmt.Sprintf("broker: { kind: kafka, kafka: { brokers: [%q], topic_prefix: \"bench%d.\", partitions: 6 } }",
			addr, time.Now().Unix()),
	})
	fmt.Fprintln(b.log)
	return err
}

func rabbitMQ(b *bench) error {
	fmt.Fprintln(b.log, "== rabbitmq: ingest through RabbitMQ on 127.0.0.1:5672, 1 KiB JSON, quorum queues")
	pub, closePub, err := rabbitPublish()
	if err != nil {
		return fmt.Errorf("%w: no RabbitMQ at %s (%v)", errSkipped, rabbitURL(), err)
	}
	b.measure("rabbitmq", "raw", "raw amqp091, pipelined confirms", "msg/s", b.spec(nil), pub)
	closePub()
	prefix := fmt.Sprintf("sluice-bench-%d.", time.Now().UnixNano())
	err = b.sluiceIngest("rabbitmq", "sluice", "sluice, rabbitmq, ack: durable", sluiceConfig{
		top: "ack: durable", backend: "concurrency: 16",
		broker: fmt.Sprintf("broker: { kind: rabbitmq, rabbitmq: { url: %q, queue_prefix: %q } }", rabbitURL(), prefix),
	})
	_ = rabbitmq.DeleteQueues(rabbitmq.Options{URL: rabbitURL(), QueuePrefix: prefix, Backends: []string{"sink"}})
	fmt.Fprintln(b.log)
	return err
}

// policyRoute turns on API-key auth, a client rate limit far above what
// the bench sends, and CORS: every request pays for all three.
const (
	policyTop   = "auth: { api_keys: [ { client: bench, key: bench-key-0123456789abcdef } ] }"
	policyRoute = "rate_limit: { rate: 10000000, burst: 10000000 }, cors: { origins: [\"https://app.example\"] }"
)

// policies measures ingest with the gateway policies on against the same
// config without them, alternating (off, on, off, on) so the machine's
// drift falls on both alike; the figures are the sums.
func policies(b *bench) error {
	fmt.Fprintln(b.log, "== policies: ingest with API-key auth, a client rate limit and CORS, against none")
	hdr := [][2]string{{"X-API-Key", "bench-key-0123456789abcdef"}, {"Origin", "https://app.example"}}
	var sum [2]float64
	for i := range 4 {
		on := i%2 == 1
		cfg := sluiceConfig{top: "ack: durable", backend: "concurrency: 16"}
		// Both get the same requests: only the config differs.
		name, label := fmt.Sprintf("off%d", i/2+1), "sluice, no policies"
		if on {
			cfg.top += "\n" + policyTop
			cfg.route = policyRoute
			name, label = fmt.Sprintf("on%d", i/2+1), "sluice, auth + rate limit + CORS"
		}
		p, err := b.startSluice(cfg)
		if err != nil {
			return err
		}
		p.pause(true)
		r := b.measure("policies", name, label, "req/s", b.spec(p.cpu), postWith(p.addr, "/v1/logs", b.conns, hdr))
		p.stop()
		if r.ok() < r.calls {
			return fmt.Errorf("policies %s: %d of %d requests refused", name, r.calls-r.ok(), r.calls)
		}
		sum[i%2] += r.rps()
	}
	b.rep.figure("policies.off.rps", sum[0])
	b.rep.figure("policies.on.rps", sum[1])
	fmt.Fprintf(b.log, "  with policies / without: %.2fx\n\n", sum[1]/sum[0])
	return nil
}
