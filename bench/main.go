// Command bench is `make bench`: it measures sluice as a separate process
// next to baselines measured in the same run, and prints ratios and whether
// each speed goal is met. Every load loop is bounded in time and count and
// targets 127.0.0.1 only.
//
//	ingest   sluice (embedded broker, ack: durable) vs a bare fasthttp server
//	         answering 202, and vs the raw JetStream async publisher
//	rate     delivered rate and its smoothness at a configured rate, burst 1
//	retries  successes/s at rate 40, concurrency 4, 503 on every first attempt
//	cpu      sluice CPU time per delivered message
//	overload 10x the connections against a bounded backlog: 503s, bounded RSS
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	amqp "github.com/rabbitmq/amqp091-go"
	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/valyala/fasthttp"

	"github.com/sluice-gw/sluice/broker/rabbitmq"
)

var (
	sluiceBin = flag.String("sluice", "bin/sluice", "sluice binary")
	dur       = flag.Duration("duration", 5*time.Second, "length of each ingest measurement")
	conns     = flag.Int("conns", 64, "client connections for ingest")
	bareAddr  = flag.String("bare-server", "", "internal: run the bare fasthttp baseline on this address")
	kfakeRun  = flag.Bool("kfake-server", false, "internal: run kfake and print its address")
	only      = flag.String("only", "", "run only these parts, comma-separated: ingest,rate,retries,cpu,overload,kafka,rabbitmq")
)

func main() {
	flag.Parse()
	if *bareAddr != "" {
		runBare(*bareAddr)
		return
	}
	if *kfakeRun {
		runKfake()
		return
	}
	fmt.Printf("sluice bench — %d cores, %s, %s per ingest run, %d connections, 1 KiB JSON\n\n",
		runtime.NumCPU(), runtime.Version(), *dur, *conns)
	want := func(p string) bool { return *only == "" || slices.Contains(strings.Split(*only, ","), p) }
	sink := newSink()
	if want("ingest") {
		benchIngest(sink)
	}
	if want("rate") {
		benchRate(sink)
	}
	if want("retries") {
		benchRetries(sink)
	}
	if want("cpu") {
		benchCPU(sink)
	}
	if want("overload") {
		benchOverload(sink)
	}
	if want("kafka") {
		benchKafka(sink)
	}
	if want("rabbitmq") {
		benchRabbit(sink)
	}
}

func verdict(ok bool) string {
	if ok {
		return "MET"
	}
	return "MISSED"
}

// ---- load generation ----

var payload = func() []byte {
	var b strings.Builder
	b.WriteString(`{"source":"bench","records":[`)
	for b.Len() < 1000 {
		if b.Len() > 30 {
			b.WriteString(",")
		}
		b.WriteString(`{"level":"info","msg":"a log line of moderate length"}`)
	}
	b.WriteString("]}")
	return []byte(b.String())
}()

type loadResult struct {
	n         int
	byStatus  map[int]int
	errors    int
	elapsed   time.Duration
	latencies []time.Duration // of 2xx answers
}

func (r loadResult) rps() float64 { return float64(r.n) / r.elapsed.Seconds() }

func (r loadResult) pct(p float64) time.Duration {
	if len(r.latencies) == 0 {
		return 0
	}
	return r.latencies[min(len(r.latencies)-1, int(float64(len(r.latencies))*p))]
}

// load posts payload to url from c connections for d (and at most maxReqs).
func load(addr, path string, c int, d time.Duration, maxReqs int64) loadResult {
	hc := &fasthttp.HostClient{Addr: addr, MaxConns: c, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second}
	var wg sync.WaitGroup
	var mu sync.Mutex
	res := loadResult{byStatus: map[int]int{}}
	var sent atomic.Int64
	stop := time.Now().Add(d)
	start := time.Now()
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			var lat []time.Duration
			by := map[int]int{}
			errs := 0
			for time.Now().Before(stop) && sent.Add(1) <= maxReqs {
				req.Reset()
				req.SetRequestURI("http://" + addr + path)
				req.Header.SetMethod("POST")
				req.Header.SetContentType("application/json")
				req.SetBody(payload)
				t0 := time.Now()
				if err := hc.Do(req, resp); err != nil {
					errs++
					continue
				}
				by[resp.StatusCode()]++
				if resp.StatusCode() < 300 {
					lat = append(lat, time.Since(t0))
				}
			}
			mu.Lock()
			res.latencies = append(res.latencies, lat...)
			for k, v := range by {
				res.byStatus[k] += v
				res.n += v
			}
			res.errors += errs
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	slices.Sort(res.latencies)
	return res
}

// closedLoop runs op from c goroutines, one call after another, for a
// second of warm-up and then for d, and measures the successful calls.
func closedLoop(c int, d time.Duration, op func() error) loadResult {
	run := func(d time.Duration) loadResult {
		var mu sync.Mutex
		res := loadResult{byStatus: map[int]int{}}
		stop := time.Now().Add(d)
		start := time.Now()
		var wg sync.WaitGroup
		for range c {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var lat []time.Duration
				for time.Now().Before(stop) {
					t0 := time.Now()
					if op() == nil {
						lat = append(lat, time.Since(t0))
					}
				}
				mu.Lock()
				res.latencies = append(res.latencies, lat...)
				res.n += len(lat)
				res.byStatus[202] += len(lat)
				mu.Unlock()
			}()
		}
		wg.Wait()
		res.elapsed = time.Since(start)
		slices.Sort(res.latencies)
		return res
	}
	run(time.Second)
	return run(d)
}

// ---- the bare fasthttp baseline, in its own process like sluice ----

func runBare(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(ln.Addr().String())
	var n atomic.Uint64
	_ = (&fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		_ = ctx.PostBody()
		id := strconv.FormatUint(n.Add(1), 36)
		ctx.SetStatusCode(202)
		ctx.SetContentType("application/json")
		ctx.Response.Header.Set("Location", "/v1/requests/"+id)
		ctx.SetBodyString(`{"id":"` + id + `","status":"queued","status_url":"/v1/requests/` + id + `"}`)
	}}).Serve(ln)
}

func startBare() (string, func()) {
	self, _ := os.Executable()
	cmd := exec.Command(self, "-bare-server", "127.0.0.1:0")
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		panic(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	return strings.TrimSpace(line), func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
}

// ---- sluice as a child process ----

type sluiceProc struct {
	cmd         *exec.Cmd
	addr, admin string
	dir         string
}

func startSluice(backendURL, backendExtra, topExtra string) *sluiceProc {
	return startSluiceWith(backendURL, backendExtra, topExtra, "")
}

func startSluiceWith(backendURL, backendExtra, topExtra, brokerCfg string) *sluiceProc {
	dir, _ := os.MkdirTemp("", "sluice-bench")
	if brokerCfg == "" {
		brokerCfg = "broker: { embedded: { dir: " + filepath.Join(dir, "q") + " } }"
	}
	cfg := fmt.Sprintf(`listen: "127.0.0.1:0"
admin_listen: "127.0.0.1:0"
log: { level: info }
%s
%s
results: { embedded: { dir: %s } }
routes: [{ name: logs, path: /v1/logs, backend: sink }]
backends:
  - name: sink
    urls: [%q]
%s`, topExtra, brokerCfg, filepath.Join(dir, "r"), backendURL, backendExtra)
	path := filepath.Join(dir, "sluice.yaml")
	_ = os.WriteFile(path, []byte(cfg), 0o644)
	cmd := exec.Command(*sluiceBin, "serve", "-config", path)
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "bench: start sluice:", err, "(run `make build` first)")
		os.Exit(1)
	}
	sc := bufio.NewScanner(stderr)
	p := &sluiceProc{cmd: cmd, dir: dir}
	for sc.Scan() {
		var l struct{ Message, Listen, Admin string }
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Message == "sluice is up" {
			p.addr, p.admin = l.Listen, l.Admin
			break
		}
	}
	go func() {
		for sc.Scan() {
		}
	}()
	if p.addr == "" {
		fmt.Fprintln(os.Stderr, "bench: sluice did not start")
		os.Exit(1)
	}
	return p
}

func (p *sluiceProc) stop() {
	_ = p.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
	_ = os.RemoveAll(p.dir)
}

func (p *sluiceProc) patch(body string) {
	req, _ := http.NewRequest("PATCH", "http://"+p.admin+"/admin/backends/sink", strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		resp.Body.Close()
	}
}

// cpu returns the process's user+system CPU time so far.
func (p *sluiceProc) cpu() time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// rss returns the resident set size in MiB.
func (p *sluiceProc) rss() float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			kb, _ := strconv.ParseFloat(strings.Fields(l)[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// submitN posts n requests from 32 connections.
func (p *sluiceProc) submitN(n int) int {
	r := load(p.addr, "/v1/logs", 32, time.Minute, int64(n))
	return r.byStatus[202]
}

// ---- the delivery sink ----

type sink struct {
	url     string
	mu      sync.Mutex
	times   []time.Time
	seen    map[string]int
	fail1st atomic.Bool
}

func newSink() *sink {
	s := &sink{seen: map[string]int{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	s.url = "http://" + ln.Addr().String() + "/ingest"
	go func() {
		_ = (&fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
			id := string(ctx.Request.Header.Peek("X-Request-Id"))
			s.mu.Lock()
			s.seen[id]++
			first := s.seen[id] == 1
			if !first || !s.fail1st.Load() {
				s.times = append(s.times, time.Now())
			}
			s.mu.Unlock()
			if first && s.fail1st.Load() {
				ctx.SetStatusCode(503)
				return
			}
			ctx.SetStatusCode(200)
			ctx.SetBodyString(`{"ok":true}`)
		}}).Serve(ln)
	}()
	return s
}

func (s *sink) reset(fail1st bool) {
	s.mu.Lock()
	s.times, s.seen = nil, map[string]int{}
	s.mu.Unlock()
	s.fail1st.Store(fail1st)
}

func (s *sink) successes() []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.times)
}

// ---- the parts ----

func benchIngest(sk *sink) {
	fmt.Println("== ingest: POST 1 KiB JSON -> 202, closed loop")
	bare, stopBare := startBare()
	load(bare, "/v1/logs", *conns, time.Second, math.MaxInt64) // warm up
	b := load(bare, "/v1/logs", *conns, *dur, math.MaxInt64)
	stopBare()

	p := startSluice(sk.url, "    concurrency: 16\n", "ack: durable")
	p.patch(`{"paused":true}`) // measure the submit path alone
	load(p.addr, "/v1/logs", *conns, time.Second, math.MaxInt64)
	s := load(p.addr, "/v1/logs", *conns, *dur, math.MaxInt64)
	p.stop()

	p = startSluice(sk.url, "    concurrency: 16\n", "ack: fast")
	p.patch(`{"paused":true}`)
	load(p.addr, "/v1/logs", *conns, time.Second, math.MaxInt64)
	f := load(p.addr, "/v1/logs", *conns, *dur, math.MaxInt64)
	p.stop()

	// The default fsyncs every second; always fsyncs before each confirm,
	// so a 202 survives a power loss too, at a cost this row shows.
	dir, _ := os.MkdirTemp("", "sluice-bench")
	p = startSluiceWith(sk.url, "    concurrency: 16\n", "ack: durable",
		"broker: { embedded: { dir: "+filepath.Join(dir, "q")+", sync: always } }")
	p.patch(`{"paused":true}`)
	load(p.addr, "/v1/logs", *conns, time.Second, math.MaxInt64)
	si := load(p.addr, "/v1/logs", *conns, *dur, math.MaxInt64)
	p.stop()
	_ = os.RemoveAll(dir)

	raw := rawJetStream(*conns, *dur)

	row := func(name string, r loadResult) {
		fmt.Printf("  %-34s %9.0f req/s   p50 %6.2f ms   p99 %6.2f ms   (non-2xx %d, errors %d)\n",
			name, r.rps(), ms(r.pct(0.50)), ms(r.pct(0.99)), r.n-r.byStatus[202], r.errors)
	}
	bareRPS = b.rps()
	row("bare fasthttp answering 202", b)
	row("sluice, embedded, ack: durable", s)
	row("sluice, embedded, durable, sync: always", si)
	row("sluice, embedded, ack: fast", f)
	fmt.Printf("  %-34s %9.0f msg/s\n", "raw JetStream async publish", raw)
	tr, lr := s.rps()/b.rps(), float64(s.pct(0.99))/float64(b.pct(0.99))
	fmt.Printf("  ratio: throughput %.2fx bare (goal >= 0.5x: %s), p99 %.2fx bare's (goal < 2x: %s), %.2fx the raw publisher\n",
		tr, verdict(tr >= 0.5), lr, verdict(lr < 2), s.rps()/raw)
	fmt.Printf("  sync: always reaches %.2fx the default sync: 1s; ack: fast is %.2fx durable\n\n",
		si.rps()/s.rps(), f.rps()/s.rps())
}

// bareRPS is the bare fasthttp baseline of this run, once measured.
var bareRPS float64

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// rawJetStream measures the broker client alone: c goroutines, each
// publishing 1 KiB asynchronously and waiting for its ack, like a submit.
func rawJetStream(c int, d time.Duration) float64 {
	dir, _ := os.MkdirTemp("", "bench-js")
	defer os.RemoveAll(dir)
	ns, err := server.NewServer(&server.Options{DontListen: true, JetStream: true, StoreDir: dir, NoSigs: true})
	if err != nil {
		panic(err)
	}
	ns.Start()
	defer ns.Shutdown()
	ns.ReadyForConnections(10 * time.Second)
	nc, err := nats.Connect("", nats.InProcessServer(ns))
	if err != nil {
		panic(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "B", Subjects: []string{"b"},
		Storage: jetstream.FileStorage, Retention: jetstream.WorkQueuePolicy}); err != nil {
		panic(err)
	}
	return closedLoop(c, d, func() error {
		m := nats.NewMsg("b")
		m.Header["sluice-id"] = []string{"x"}
		m.Data = payload
		f, err := js.PublishMsgAsync(m)
		if err != nil {
			return err
		}
		select {
		case <-f.Ok():
			return nil
		case err := <-f.Err():
			return err
		}
	}).rps()
}

func benchRate(sk *sink) {
	const rate, secs = 100, 10
	fmt.Printf("== rate: deliveries at rate %d/s, burst 1, concurrency 16, %d s\n", rate, secs)
	sk.reset(false)
	p := startSluice(sk.url, fmt.Sprintf("    rate: %d\n    burst: 1\n    concurrency: 16\n", rate), "")
	defer p.stop()
	p.patch(`{"paused":true}`)
	p.submitN(rate*secs + 300)
	p.patch(`{"paused":false}`)
	time.Sleep(secs*time.Second + 500*time.Millisecond)
	ts := sk.successes()
	if len(ts) < rate*secs {
		fmt.Printf("  only %d deliveries\n\n", len(ts))
		return
	}
	// Skip the first second (start-up), measure the next secs-2 seconds.
	start := ts[0].Add(time.Second)
	end := start.Add((secs - 2) * time.Second)
	windows := make([]int, (secs-2)*10)
	total := 0
	for _, t := range ts {
		if t.Before(start) || !t.Before(end) {
			continue
		}
		windows[int(t.Sub(start)/(100*time.Millisecond))]++
		total++
	}
	got := float64(total) / float64(secs-2)
	lo, hi := slices.Min(windows), slices.Max(windows)
	in := 0
	for _, w := range windows {
		if w >= rate/10-1 && w <= rate/10+1 {
			in++
		}
	}
	dev := (got - rate) / rate * 100
	fmt.Printf("  delivered %.1f/s (%+.2f%%; goal within ±3%%: %s)\n", got, dev, verdict(math.Abs(dev) <= 3))
	fmt.Printf("  100 ms windows: min %d, max %d; %d of %d hold %d±1 (goal all: %s)\n\n",
		lo, hi, in, len(windows), rate/10, verdict(in == len(windows)))
}

func benchRetries(sk *sink) {
	const n = 200
	fmt.Printf("== retries: rate 40, concurrency 4, 503 on every first attempt, %d requests (breaker off: every first attempt failing would open it)\n", n)
	sk.reset(true)
	p := startSluice(sk.url, "    rate: 40\n    burst: 1\n    concurrency: 4\n    retry: { initial_backoff: 100ms, max_backoff: 1s }\n    breaker: { failures: 0 }\n", "")
	defer p.stop()
	p.patch(`{"paused":true}`)
	p.submitN(n)
	t0 := time.Now()
	p.patch(`{"paused":false}`)
	for len(sk.successes()) < n && time.Since(t0) < time.Minute {
		time.Sleep(10 * time.Millisecond)
	}
	ts := sk.successes()
	if len(ts) < n {
		fmt.Printf("  only %d of %d succeeded within a minute\n\n", len(ts), n)
		return
	}
	got := float64(n) / ts[n-1].Sub(t0).Seconds()
	fmt.Printf("  %d succeeded in %.1f s: %.1f successes/s (the budget allows 20: each takes 2 attempts; goal >= 19: %s)\n\n",
		n, ts[n-1].Sub(t0).Seconds(), got, verdict(got >= 19))
}

func benchCPU(sk *sink) {
	const n = 5000
	fmt.Printf("== cpu: %d deliveries, no rate limit, concurrency 32\n", n)
	sk.reset(false)
	p := startSluice(sk.url, "    concurrency: 32\n", "")
	defer p.stop()
	p.patch(`{"paused":true}`)
	p.submitN(n)
	time.Sleep(500 * time.Millisecond)
	c0, t0 := p.cpu(), time.Now()
	p.patch(`{"paused":false}`)
	for len(sk.successes()) < n && time.Since(t0) < 2*time.Minute {
		time.Sleep(20 * time.Millisecond)
	}
	el := time.Since(t0)
	time.Sleep(300 * time.Millisecond) // let the collector store the last outcomes
	used := p.cpu() - c0
	got := len(sk.successes())
	fmt.Printf("  %d delivered in %.2f s (%.0f/s); sluice used %.2f s CPU: %.0f µs CPU per delivered message (fetch, HTTP, result event, store, ack)\n\n",
		got, el.Seconds(), float64(got)/el.Seconds(), used.Seconds(), float64(used.Microseconds())/float64(max(got, 1)))
}

func benchOverload(sk *sink) {
	c := *conns * 10
	fmt.Printf("== overload: %d connections against a backend draining 500/s with max_backlog 5000, %s\n", c, *dur)
	sk.reset(false)
	p := startSluice(sk.url, "    rate: 500\n    burst: 50\n    max_backlog: 5000\n", "max_inflight: 512")
	defer p.stop()
	rss0 := p.rss()
	var peak atomic.Int64
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
				if r := int64(p.rss()); r > peak.Load() {
					peak.Store(r)
				}
			}
		}
	}()
	r := load(p.addr, "/v1/logs", c, *dur, math.MaxInt64)
	close(stop)
	resp, err := http.Get("http://" + p.admin + "/healthz")
	alive := err == nil && resp.StatusCode == 200
	if err == nil {
		resp.Body.Close()
	}
	fmt.Printf("  offered %.0f req/s: %d accepted (202), %d refused (503), %d other, %d transport errors\n",
		r.rps(), r.byStatus[202], r.byStatus[503], r.n-r.byStatus[202]-r.byStatus[503], r.errors)
	fmt.Printf("  RSS %.0f MiB idle, %d MiB peak; still serving afterwards: %v (goal: bounded, excess 503, alive: %s)\n\n",
		rss0, peak.Load(), alive, verdict(alive && r.byStatus[503] > 0 && peak.Load() < 1024))
}

// ---- Kafka: kfake in its own process ----

func runKfake() {
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(c.ListenAddrs()[0])
	select {}
}

func startKfake() (string, func()) {
	self, _ := os.Executable()
	cmd := exec.Command(self, "-kfake-server")
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		panic(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	return strings.TrimSpace(line), func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
}

// rawKafka measures kafka-go's writer alone, configured as sluice's: acks
// from all replicas, 2 ms batch timeout; c goroutines each writing one
// 1 KiB message at a time, like submits.
func rawKafka(addr string, c int, d time.Duration) loadResult {
	ctx := context.Background()
	client := &kafkago.Client{Addr: kafkago.TCP(addr), Timeout: 10 * time.Second}
	_, _ = client.CreateTopics(ctx, &kafkago.CreateTopicsRequest{Topics: []kafkago.TopicConfig{
		{Topic: "raw", NumPartitions: 6, ReplicationFactor: -1}}})
	w := &kafkago.Writer{Addr: kafkago.TCP(addr), Topic: "raw", Balancer: &kafkago.Hash{},
		RequiredAcks: kafkago.RequireAll, BatchTimeout: 2 * time.Millisecond, BatchSize: 1000}
	defer w.Close()
	var seq atomic.Int64
	return closedLoop(c, d, func() error {
		k := strconv.FormatInt(seq.Add(1), 36)
		return w.WriteMessages(ctx, kafkago.Message{Key: []byte(k), Value: payload,
			Headers: []kafkago.Header{{Key: "sluice-id", Value: []byte(k)}}})
	})
}

func benchKafka(sk *sink) {
	var addr string
	if env := os.Getenv("KAFKA_BROKERS"); env != "" {
		addr, _, _ = strings.Cut(env, ",")
		fmt.Printf("== kafka: ingest through Kafka at %s, 1 KiB JSON\n", addr)
	} else {
		fmt.Println("== kafka: ingest through Kafka (kfake in its own process), 1 KiB JSON")
		a, stopK := startKfake()
		defer stopK()
		addr = a
	}
	raw := rawKafka(addr, *conns, *dur)
	p := startSluiceWith(sk.url, "    concurrency: 16\n", "ack: durable",
		fmt.Sprintf("broker: { kind: kafka, kafka: { brokers: [%q], topic_prefix: \"bench%d.\", partitions: 6 } }", addr, time.Now().Unix()))
	p.patch(`{"paused":true}`)
	load(p.addr, "/v1/logs", *conns, time.Second, math.MaxInt64)
	s := load(p.addr, "/v1/logs", *conns, *dur, math.MaxInt64)
	p.stop()
	fmt.Printf("  %-34s %9.0f msg/s   p50 %6.2f ms   p99 %6.2f ms\n", "raw kafka-go writer, same batching", raw.rps(), ms(raw.pct(0.5)), ms(raw.pct(0.99)))
	fmt.Printf("  %-34s %9.0f req/s   p50 %6.2f ms   p99 %6.2f ms   (non-2xx %d, errors %d)\n", "sluice, kafka, ack: durable",
		s.rps(), ms(s.pct(0.5)), ms(s.pct(0.99)), s.n-s.byStatus[202], s.errors)
	r := s.rps() / raw.rps()
	fmt.Printf("  ratio: %.2fx the raw writer (goal >= 0.7x: %s); p99 %.2f ms (goal < 10 ms: %s)",
		r, verdict(r >= 0.7), ms(s.pct(0.99)), verdict(s.pct(0.99) < 10*time.Millisecond))
	if bareRPS > 0 {
		fmt.Printf("; %.2fx bare fasthttp", s.rps()/bareRPS)
	}
	fmt.Print("\n\n")
}

// ---- RabbitMQ ----

func rabbitURL() string {
	if u := os.Getenv("RABBITMQ_URL"); u != "" {
		return u
	}
	return "amqp://guest:guest@127.0.0.1:5672/"
}

// rawRabbit measures amqp091-go alone, pipelined as sluice does: a pool of
// 4 confirm-mode channels, c goroutines each publishing one persistent 1 KiB
// message to a quorum queue and waiting for its deferred confirm.
func rawRabbit(c int, d time.Duration) (loadResult, error) {
	conn, err := amqp.Dial(rabbitURL())
	if err != nil {
		return loadResult{}, err
	}
	defer conn.Close()
	q := fmt.Sprintf("sluice-bench-raw-%d", time.Now().UnixNano())
	setup, err := conn.Channel()
	if err != nil {
		return loadResult{}, err
	}
	if _, err := setup.QueueDeclare(q, true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
		return loadResult{}, err
	}
	defer func() { _, _ = setup.QueueDelete(q, false, false, false); setup.Close() }()
	pool := make(chan *amqp.Channel, 4)
	for range 4 {
		ch, err := conn.Channel()
		if err != nil {
			return loadResult{}, err
		}
		if err := ch.Confirm(false); err != nil {
			return loadResult{}, err
		}
		pool <- ch
	}
	ctx := context.Background()
	return closedLoop(c, d, func() error {
		ch := <-pool
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", q, false, false, amqp.Publishing{
			Headers: amqp.Table{"sluice-id": "x"}, Body: payload, DeliveryMode: amqp.Persistent})
		pool <- ch
		if err != nil {
			return err
		}
		if ok, err := dc.WaitContext(ctx); err != nil || !ok {
			return fmt.Errorf("not confirmed: %v", err)
		}
		return nil
	}), nil
}

func benchRabbit(sk *sink) {
	fmt.Println("== rabbitmq: ingest through RabbitMQ on 127.0.0.1:5672, 1 KiB JSON, quorum queues")
	raw, err := rawRabbit(*conns, *dur)
	if err != nil {
		fmt.Printf("  skipped: no RabbitMQ at %s (%v)\n\n", rabbitURL(), err)
		return
	}
	prefix := fmt.Sprintf("sluice-bench-%d.", time.Now().UnixNano())
	p := startSluiceWith(sk.url, "    concurrency: 16\n", "ack: durable",
		fmt.Sprintf("broker: { kind: rabbitmq, rabbitmq: { url: %q, queue_prefix: %q } }", rabbitURL(), prefix))
	p.patch(`{"paused":true}`)
	load(p.addr, "/v1/logs", *conns, time.Second, math.MaxInt64)
	s := load(p.addr, "/v1/logs", *conns, *dur, math.MaxInt64)
	p.stop()
	_ = rabbitmq.DeleteQueues(rabbitmq.Options{URL: rabbitURL(), QueuePrefix: prefix, Backends: []string{"sink"}})
	fmt.Printf("  %-34s %9.0f msg/s   p50 %6.2f ms   p99 %6.2f ms\n", "raw amqp091, pipelined confirms", raw.rps(), ms(raw.pct(0.5)), ms(raw.pct(0.99)))
	fmt.Printf("  %-34s %9.0f req/s   p50 %6.2f ms   p99 %6.2f ms   (non-2xx %d, errors %d)\n", "sluice, rabbitmq, ack: durable",
		s.rps(), ms(s.pct(0.5)), ms(s.pct(0.99)), s.n-s.byStatus[202], s.errors)
	r := s.rps() / raw.rps()
	fmt.Printf("  ratio: %.2fx the raw publisher (goal >= 0.7x: %s); p99 %.2f ms (goal < 10 ms: %s)\n\n",
		r, verdict(r >= 0.7), ms(s.pct(0.99)), verdict(s.pct(0.99) < 10*time.Millisecond))
}
