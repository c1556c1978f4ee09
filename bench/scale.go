package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sluice-gw/sluice/broker/rabbitmq"
)

// The scale part: sluice split into processes by role (ingress+collector,
// worker) on Kafka and RabbitMQ with the Redis result store, 1 to
// scaleMaxProcs processes of the role measured.
const (
	scaleMaxProcs    = 3
	scaleBacklog     = 20000           // requests waiting when the workers start
	scaleRate        = 300             // the backend's rate in the rate window
	scaleConcurrency = 32              // the backend's concurrency, in total
	scaleRateWindow  = 5 * time.Second // the rate window
	scaleDrainBound  = time.Minute     // the most a drain may take
)

// A scaleBroker is one broker the scale part runs on.
type scaleBroker struct {
	name   string
	note   string                     // printed with the part's header
	config func(prefix string) string // the broker key, topics or queues under prefix
	// cleanup, if set, removes what a run under prefix left in the broker.
	cleanup  func(prefix string)
	raw      func() (op, func(), error) // the raw client baseline
	rawLabel string
	cpu      func() time.Duration // the broker's CPU so far; nil: unknown
}

// scale measures how ingest and delivery grow with the processes of their
// role: on a 2-core machine they cannot grow (every process shares the same
// two cores with the broker, Redis and the load), so the part reports CPU
// per request and per delivery, from which the README projects a cluster.
func scale(b *bench) error {
	redis := redisAddr()
	c, err := net.DialTimeout("tcp", redis, time.Second)
	if err != nil {
		return fmt.Errorf("%w: no Redis at %s (%v)", errSkipped, redis, err)
	}
	_ = c.Close()
	redisPid := pidOf("redis-server")
	fmt.Fprintf(b.log, "== scale: 1-%d sluice processes per role, Redis result store at %s, 1 KiB JSON\n", scaleMaxProcs, redis)
	var brokers []scaleBroker
	if _, closePub, err := rabbitPublish(); err != nil {
		fmt.Fprintf(b.log, "  rabbitmq skipped: no RabbitMQ at %s (%v)\n", rabbitURL(), err)
	} else {
		closePub()
		brokers = append(brokers, scaleBroker{
			name: "rabbitmq", note: "RabbitMQ at " + rabbitURL() + ", quorum queues",
			config: func(prefix string) string {
				return fmt.Sprintf("broker: { kind: rabbitmq, rabbitmq: { url: %q, queue_prefix: %q } }", rabbitURL(), prefix)
			},
			cleanup: func(prefix string) {
				_ = rabbitmq.DeleteQueues(rabbitmq.Options{URL: rabbitURL(), QueuePrefix: prefix, Backends: []string{"sink"}})
			},
			raw: rabbitPublish, rawLabel: "raw amqp091, pipelined confirms",
			cpu: pidCPU(pidOf("beam.smp")),
		})
	}
	kafkaAddr, kafkaNote := "", ""
	var kafkaCPU func() time.Duration
	if env := os.Getenv("KAFKA_BROKERS"); env != "" {
		kafkaAddr, _, _ = strings.Cut(env, ",")
		kafkaNote = "Kafka at " + kafkaAddr
	} else if k, err := startChild("-kfake-server"); err != nil {
		fmt.Fprintf(b.log, "  kafka skipped: %v\n", err)
	} else {
		defer k.stop()
		kafkaAddr, kafkaCPU = k.addr, k.cpu
		kafkaNote = "kfake in its own process: one node, in memory, no replication"
	}
	if kafkaAddr != "" {
		brokers = append(brokers, scaleBroker{
			name: "kafka", note: kafkaNote + ", 6 partitions a topic",
			config: func(prefix string) string {
				return fmt.Sprintf("broker: { kind: kafka, kafka: { brokers: [%q], topic_prefix: %q, partitions: 6 } }", kafkaAddr, prefix)
			},
			raw:      func() (op, func(), error) { return kafkaWrite(kafkaAddr) },
			rawLabel: "raw kafka-go writer, same batching",
			cpu:      kafkaCPU,
		})
	}
	if len(brokers) == 0 {
		return fmt.Errorf("%w: neither RabbitMQ nor Kafka", errSkipped)
	}
	s := &scaleRun{bench: b, redis: redis, redisCPU: pidCPU(redisPid), run: time.Now().UnixNano()}
	for _, k := range brokers {
		fmt.Fprintf(b.log, "  -- %s: %s\n", k.name, k.note)
		if err := s.on(k); err != nil {
			return fmt.Errorf("%s: %w", k.name, err)
		}
	}
	fmt.Fprintln(b.log)
	return nil
}

// scaleRun is one run of the scale part.
type scaleRun struct {
	*bench
	redis    string
	redisCPU func() time.Duration // nil: Redis's process not found here
	run      int64                // names this run's topics, queues and keys
	seq      int
}

// prefix returns a fresh prefix for topics, queues and Redis keys, so that
// no measurement sees what an earlier one left.
func (s *scaleRun) prefix() string {
	s.seq++
	return fmt.Sprintf("sluice-scale-%d-%d.", s.run, s.seq)
}

func (s *scaleRun) on(k scaleBroker) error {
	pub, closePub, err := k.raw()
	if err != nil {
		return fmt.Errorf("raw client: %w", err)
	}
	s.measure("scale", k.name+".raw", k.rawLabel, "msg/s", s.spec(nil), pub)
	closePub()
	fmt.Fprintf(s.log, "  ingest: %d connections spread across the ingress processes (each with the collector role); one worker process, paused\n", s.conns)
	for n := 1; n <= scaleMaxProcs; n++ {
		if err := s.ingest(k, n); err != nil {
			return fmt.Errorf("ingest with %d: %w", n, err)
		}
	}
	fmt.Fprintf(s.log, "  delivery: a %d backlog, concurrency %d in total; rate %d for %s, then rate 0 (measured over the middle 80%% of the drain)\n",
		scaleBacklog, scaleConcurrency, scaleRate, scaleRateWindow)
	for n := 1; n <= scaleMaxProcs; n++ {
		if err := s.delivery(k, n); err != nil {
			return fmt.Errorf("delivery with %d: %w", n, err)
		}
	}
	return nil
}

// ingest measures n ingress,collector processes under b.conns connections
// spread across them, with one worker process whose backend is paused (so
// no delivery shares the cores with the measurement).
func (s *scaleRun) ingest(k scaleBroker, n int) error {
	prefix := s.prefix()
	if k.cleanup != nil {
		defer k.cleanup(prefix)
	}
	cfg := s.scaleConfig(k, prefix, fmt.Sprintf("concurrency: %d", scaleConcurrency))
	roles := slices.Repeat([]string{"ingress,collector"}, n)
	procs, err := s.startRoles(cfg, append(roles, "worker"))
	if err != nil {
		return err
	}
	defer stopAll(procs)
	fronts, worker := procs[:n], procs[n]
	if err := patchBackend(worker, `{"paused":true}`); err != nil {
		return err
	}
	defer dropTuning(worker) // kept in Redis until dropped, unlike the records
	ops := make([]op, n)
	counts := spread(s.conns, n)
	for i, p := range fronts {
		ops[i] = post(p.addr, "/v1/logs", counts[i])
	}
	spec := s.spec(sumCPU(procs))
	key := fmt.Sprintf("%s.ingest.n%d", k.name, n)
	// Warm up apart, so that the CPU read around the measurement is the
	// measurement's.
	spreadLoad(loadSpec{conns: spec.conns, dur: spec.warmup}, ops)
	spec.warmup = 0
	var r loadResult
	cores := s.others(k).during(func() { r = spreadLoad(spec, ops) })
	cores.sluice = r.cpu
	m := newMeasurement("scale", key, fmt.Sprintf("%d ingress process(es), ack: durable", n), "req/s", s.conns, r)
	s.rep.add(m)
	fmt.Fprintln(s.log, m.row())
	s.recordCores("scale."+key, cores, r.elapsed, float64(r.calls), "req")
	return nil
}

// delivery measures n worker processes draining a backlog: first at rate
// scaleRate (set for the backend in total: the processes must share it),
// then unlimited.
func (s *scaleRun) delivery(k scaleBroker, n int) error {
	prefix := s.prefix()
	if k.cleanup != nil {
		defer k.cleanup(prefix)
	}
	s.sink.reset(false)
	cfg := s.scaleConfig(k, prefix, fmt.Sprintf("rate: %d\nconcurrency: %d", scaleRate, scaleConcurrency))
	front, err := s.startRoles(cfg, []string{"ingress,collector"})
	if err != nil {
		return err
	}
	defer stopAll(front)
	// No worker yet: the backlog waits in the broker.
	accepted := front[0].submitN(scaleBacklog)
	if accepted < scaleBacklog*9/10 {
		return fmt.Errorf("backlog: only %d of %d accepted", accepted, scaleBacklog)
	}
	workers, err := s.startRoles(cfg, slices.Repeat([]string{"worker"}, n))
	if err != nil {
		return err
	}
	defer stopAll(workers)
	defer dropTuning(front[0]) // the rate: 0 below is kept in Redis until dropped
	// The rate holds in total once each worker knows its share.
	var shares []float64
	settled := waitFor(30*time.Second, 100*time.Millisecond, func() bool {
		shares = shares[:0]
		sum := 0.0
		for _, w := range workers {
			st, err := backendStats(w)
			if err != nil || st.Share <= 0 {
				return false
			}
			shares = append(shares, st.Share)
			sum += st.Share
		}
		return sum > 0.99 && sum < 1.01
	})
	if !settled {
		return fmt.Errorf("the workers' shares did not add up to 1 within 30 s (last %v)", shares)
	}
	key := fmt.Sprintf("scale.%s.delivery.n%d", k.name, n)
	n0, t0 := s.sink.count(), time.Now()
	time.Sleep(scaleRateWindow)
	got := float64(s.sink.count()-n0) / time.Since(t0).Seconds()
	dev := (got - scaleRate) / scaleRate * 100
	s.rep.figure(key+".rate_per_s", got)
	s.rep.figure(key+".rate_deviation_pct", dev)
	fmt.Fprintf(s.log, "  %-40s %9.1f delivered/s (%+.1f%% off the rate), shares %s\n",
		fmt.Sprintf("%d worker process(es), rate %d in total", n, scaleRate), got, dev, formatShares(shares))

	// Unlimited: every worker's rate to 0, the rest of the backlog drained.
	// One PATCH reaches every process; sent to each, each has applied it
	// when its answer comes.
	for _, w := range workers {
		if err := patchBackend(w, `{"rate":0}`); err != nil {
			return err
		}
	}
	tp, before := time.Now(), s.sink.count()
	others := s.others(k)
	all := append(slices.Clone(front), workers...)
	wcpu, acpu := sumCPU(workers), sumCPU(all)
	w0, a0 := wcpu(), acpu()
	var drained bool
	cores := others.during(func() {
		drained = waitFor(scaleDrainBound, 20*time.Millisecond, func() bool { return s.sink.count() >= accepted })
		time.Sleep(300 * time.Millisecond) // the collector stores the last outcomes
	})
	el := time.Since(tp)
	wused, aused := wcpu()-w0, acpu()-a0
	done := s.sink.count() - before
	if !drained {
		return fmt.Errorf("drain: %d of %d delivered in %s", s.sink.count(), accepted, scaleDrainBound)
	}
	perS := drainRate(s.sink.successes(), tp)
	s.rep.figure(key+".per_s", perS)
	s.rep.figure(key+".us_per_delivery", us(aused)/float64(max(done, 1)))
	s.rep.figure(key+".worker_us_per_delivery", us(wused)/float64(max(done, 1)))
	fmt.Fprintf(s.log, "  %-40s %9.0f delivered/s   CPU %.0f µs/delivery (workers %.0f, collector %.0f)\n",
		fmt.Sprintf("%d worker process(es), rate 0", n), perS, us(aused)/float64(max(done, 1)),
		us(wused)/float64(max(done, 1)), us(aused-wused)/float64(max(done, 1)))
	cores.sluice = aused
	s.recordCores(key, cores, el, float64(done), "delivery")
	return nil
}

// drainRate is the deliveries per second among those after t0, between
// the 10th and the 90th percentile of their times: the steady middle of a
// drain, without the start (connections, first fetches) and the tail.
func drainRate(ts []time.Time, t0 time.Time) float64 {
	i := 0
	for i < len(ts) && ts[i].Before(t0) {
		i++
	}
	ts = ts[i:]
	lo, hi := len(ts)/10, len(ts)*9/10
	if hi <= lo || !ts[hi-1].After(ts[lo]) {
		return 0
	}
	return float64(hi-1-lo) / ts[hi-1].Sub(ts[lo]).Seconds()
}

// formatShares prints shares as 0.50/0.50.
func formatShares(shares []float64) string {
	s := make([]string, len(shares))
	for i, v := range shares {
		s[i] = fmt.Sprintf("%.2f", v)
	}
	return strings.Join(s, "/")
}

// ---- CPU of the processes around sluice ----

// cpuUse is the CPU the processes of a measurement used during it.
type cpuUse struct {
	sluice, broker, redis, load time.Duration
	machine                     time.Duration // every process on the machine, ours and others'
	brokerKnown, redisKnown     bool
}

// otherCPU reads the CPU of the processes other than sluice's.
type otherCPU struct{ broker, redis func() time.Duration }

func (s *scaleRun) others(k scaleBroker) otherCPU {
	return otherCPU{broker: k.cpu, redis: s.redisCPU}
}

// during runs f and returns what the broker, Redis and this program (the
// load generator and the sink) used meanwhile; sluice's share is the
// caller's to fill in.
func (o otherCPU) during(f func()) cpuUse {
	read := func(c func() time.Duration) time.Duration {
		if c == nil {
			return 0
		}
		return c()
	}
	self := pidCPU(os.Getpid())
	b0, r0, l0, m0 := read(o.broker), read(o.redis), self(), machineBusy()
	f()
	return cpuUse{broker: read(o.broker) - b0, redis: read(o.redis) - r0, load: self() - l0, machine: machineBusy() - m0,
		brokerKnown: o.broker != nil, redisKnown: o.redis != nil}
}

// recordCores records and prints the cores each process group kept busy
// over el, and the broker's and Redis's CPU per unit (request, delivery).
func (s *scaleRun) recordCores(key string, c cpuUse, el time.Duration, units float64, unit string) {
	secs := el.Seconds()
	line := fmt.Sprintf("    cores busy: load+sink %.2f", c.load.Seconds()/secs)
	s.rep.figure(key+".load_cores", c.load.Seconds()/secs)
	if c.sluice > 0 {
		line = fmt.Sprintf("    cores busy: sluice %.2f, load+sink %.2f", c.sluice.Seconds()/secs, c.load.Seconds()/secs)
		s.rep.figure(key+".sluice_cores", c.sluice.Seconds()/secs)
	}
	if c.brokerKnown {
		s.rep.figure(key+".broker_cores", c.broker.Seconds()/secs)
		s.rep.figure(key+".broker_us_per_"+unit, us(c.broker)/max(units, 1))
		line += fmt.Sprintf(", broker %.2f (%.0f µs/%s)", c.broker.Seconds()/secs, us(c.broker)/max(units, 1), unit)
	}
	if c.redisKnown {
		s.rep.figure(key+".redis_cores", c.redis.Seconds()/secs)
		s.rep.figure(key+".redis_us_per_"+unit, us(c.redis)/max(units, 1))
		line += fmt.Sprintf(", Redis %.2f (%.0f µs/%s)", c.redis.Seconds()/secs, us(c.redis)/max(units, 1), unit)
	}
	if c.machine > 0 {
		s.rep.figure(key+".machine_cores", c.machine.Seconds()/secs)
		line += fmt.Sprintf("; the machine %.2f", c.machine.Seconds()/secs)
	}
	fmt.Fprintln(s.log, line)
}

// machineBusy returns the CPU time all processes on the machine have used
// so far (/proc/stat: all but idle and iowait), 0 if unknown: what another
// benchmark on the machine takes shows as the gap between it and ours.
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var busy int64
	for i, v := range f[1:9] { // user nice system idle iowait irq softirq steal
		n, _ := strconv.ParseInt(v, 10, 64)
		if i != 3 && i != 4 {
			busy += n
		}
	}
	return time.Duration(busy) * time.Second / 100 // USER_HZ
}

// pidOf returns the id of a running process named comm (as in
// /proc/<pid>/comm), 0 if none; to read its CPU, never to signal it.
func pidOf(comm string) int {
	dirs, _ := filepath.Glob("/proc/[0-9]*/comm")
	for _, d := range dirs {
		b, err := os.ReadFile(d)
		if err != nil || strings.TrimSpace(string(b)) != comm {
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(d, "/proc/%d/comm", &pid); err == nil {
			return pid
		}
	}
	return 0
}

// pidCPU returns a reader of pid's CPU time, nil for pid 0.
func pidCPU(pid int) func() time.Duration {
	if pid == 0 {
		return nil
	}
	return func() time.Duration { return procCPU(pid) }
}

func sumCPU(ps []*sluiceProc) func() time.Duration {
	return func() time.Duration {
		var t time.Duration
		for _, p := range ps {
			t += p.cpu()
		}
		return t
	}
}

// ---- load spread across addresses ----

// spread splits conns connections across n addresses round-robin: the
// first conns%n get one more than the others.
func spread(conns, n int) []int {
	out := make([]int, n)
	for i := range conns {
		out[i%n]++
	}
	return out
}

// spreadLoad measures ops[i] (one address each) with spread(spec.conns,
// len(ops))[i] connections each, all at once, as one closed loop would:
// each connection stays with its address. The result is their sum.
func spreadLoad(spec loadSpec, ops []op) loadResult {
	counts := spread(spec.conns, len(ops))
	each := func(d time.Duration) loadResult {
		rs := make([]loadResult, len(ops))
		var wg sync.WaitGroup
		for i, o := range ops {
			if counts[i] == 0 {
				continue
			}
			wg.Go(func() {
				var maxCalls int64
				if spec.maxCalls > 0 {
					maxCalls = max(1, spec.maxCalls*int64(counts[i])/int64(spec.conns))
				}
				rs[i] = closedLoop(counts[i], d, maxCalls, o)
			})
		}
		wg.Wait()
		return mergeResults(rs...)
	}
	if spec.warmup > 0 {
		each(spec.warmup)
	}
	var cpu0 time.Duration
	if spec.cpu != nil {
		cpu0 = spec.cpu()
	}
	r := each(spec.dur)
	if spec.cpu != nil {
		r.cpu = spec.cpu() - cpu0
	}
	return r
}

// mergeResults sums loads run at the same time: calls, statuses, errors and
// CPU add up, latencies are pooled, and the elapsed time is the longest.
func mergeResults(rs ...loadResult) loadResult {
	out := loadResult{byStatus: map[int]int{}}
	for _, r := range rs {
		out.calls += r.calls
		out.errors += r.errors
		out.cpu += r.cpu
		out.elapsed = max(out.elapsed, r.elapsed)
		for k, v := range r.byStatus {
			out.byStatus[k] += v
		}
		out.latencies = append(out.latencies, r.latencies...)
	}
	slices.Sort(out.latencies)
	return out
}

// ---- sluice processes by role ----

func redisAddr() string {
	if a := os.Getenv("REDIS_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

// scaleConfig is the config every process of one measurement shares:
// broker k under prefix, Redis as the result store (keys under prefix,
// kept 2 minutes: the bench leaves nothing behind for long in a shared
// Redis), and the sink backend with the given keys.
func (s *scaleRun) scaleConfig(k scaleBroker, prefix, backend string) string {
	var be strings.Builder
	for l := range strings.SplitSeq(backend, "\n") {
		be.WriteString("    " + l + "\n")
	}
	return fmt.Sprintf(`listen: "127.0.0.1:0"
admin_listen: "127.0.0.1:0"
log: { level: info }
ack: durable
%s
%s
results: { store: redis, ttl: 2m, redis: { addr: %q, key_prefix: %q } }
routes: [{ name: logs, path: /v1/logs, backend: sink }]
backends:
  - name: sink
    urls: [%q]
%s`, *extraConfig, k.config(prefix), s.redis, prefix, s.sink.url, be.String())
}

// startRoles starts one sluice process per entry of roles, all at once,
// each with config yaml, and waits until each says it is up; on an error
// it stops those it started.
func (s *scaleRun) startRoles(yaml string, roles []string) ([]*sluiceProc, error) {
	procs := make([]*sluiceProc, len(roles))
	errs := make([]error, len(roles))
	var wg sync.WaitGroup
	for i, r := range roles {
		wg.Go(func() { procs[i], errs[i] = startRole(s.bin, yaml, r) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		stopAll(procs)
		return nil, err
	}
	return procs, nil
}

func stopAll(ps []*sluiceProc) {
	var wg sync.WaitGroup
	for _, p := range ps {
		if p != nil {
			wg.Go(p.stop)
		}
	}
	wg.Wait()
}

// startRole starts `sluice serve -roles roles` with config yaml in a
// directory of its own and waits (at most 30 s) until it says it is up. A
// process without the ingress role has no addr.
func startRole(bin, yaml, roles string) (*sluiceProc, error) {
	dir, err := os.MkdirTemp("", "sluice-scale")
	if err != nil {
		return nil, fmt.Errorf("make temporary directory: %w", err)
	}
	return launch(bin, dir, yaml, "-roles", roles)
}

// patchBackend sends body to PATCH /admin/backends/sink of p.
func patchBackend(p *sluiceProc, body string) error {
	req, err := http.NewRequest("PATCH", "http://"+p.admin+"/admin/backends/sink", strings.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("patch %s: %w", body, err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("patch %s: %s", body, resp.Status)
	}
	return nil
}

// dropTuning takes the sink backend back to its config in every process
// (DELETE /admin/backends/sink/tuning), so that no tuning outlives the run
// in a shared Redis.
func dropTuning(p *sluiceProc) {
	req, err := http.NewRequest("DELETE", "http://"+p.admin+"/admin/backends/sink/tuning", nil)
	if err != nil {
		return
	}
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
	}
}

// backendStats is what p's admin API says of the sink backend.
func backendStats(p *sluiceProc) (st struct {
	Share float64 `json:"share"` // of the backend's rate and concurrency
}, err error) {
	resp, err := http.Get("http://" + p.admin + "/admin/backends/sink")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	var b struct {
		Stats json.RawMessage `json:"stats"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&b); err != nil {
		return st, err
	}
	err = json.Unmarshal(b.Stats, &st)
	return st, err
}
