package metrics

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sluice-gw/sluice/backlog"
	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/metering"
	"github.com/sluice-gw/sluice/workers"
)

// Backends reports the backends' worker pools (workers.Manager).
type Backends interface {
	Names() []string
	Status(name string) (workers.Status, bool)
}

// Backlog estimates a topic's backlog (backlog.Monitor).
type Backlog interface {
	Estimate(topic string, rate float64, slots int) backlog.Estimate
}

// Meter is the ingress's per-client metering (metering.Meter).
type Meter interface {
	ByStatus() []metering.Answers
}

// Sources are what a scrape reads. Each is asked once per scrape and may
// be nil: a process without the ingress role has no Meter, and then no
// sluice_requests_total.
type Sources struct {
	Backends Backends
	Backlog  Backlog
	Meter    Meter
	// QueueOnly: this process delivers nothing (no worker role), so of
	// each backend only the queue's series (depth, backlog seconds) are
	// exported; pool series at their defaults would add a phantom worker
	// to every sum across processes.
	QueueOnly bool
}

// Metrics serves the Prometheus text format. It is safe for concurrent
// use; concurrent scrapes share one collection.
type Metrics struct {
	h http.Handler
}

// New builds the /metrics handler over src. It starts nothing.
func New(src Sources) *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(newCollector(src), collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return &Metrics{h: promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorHandling:       promhttp.ContinueOnError, // one bad series never hides the rest
		MaxRequestsInFlight: 8,
		Timeout:             10 * time.Second,
		CoalesceGather:      true,
	})}
}

// ServeHTTP answers a scrape.
func (m *Metrics) ServeHTTP(rw http.ResponseWriter, r *http.Request) { m.h.ServeHTTP(rw, r) }

// The outcomes of sluice_deliveries_total.
const (
	Succeeded    = "succeeded"
	Failed       = "failed"
	Retried      = "retried"
	DeadLettered = "dead_lettered"
)

// collector reads every sluice_* series from its sources at each scrape.
type collector struct {
	src    Sources
	bounds []float64 // the latency buckets' upper bounds, in seconds

	requests, requestBytes         *prometheus.Desc
	deliveries, attempts, duration *prometheus.Desc
	queueDepth, backlogSeconds     *prometheus.Desc
	concurrency, rate, inFlight    *prometheus.Desc
	breakerOpen, paused            *prometheus.Desc
}

func newCollector(src Sources) *collector {
	b := []string{"backend"}
	c := &collector{
		src: src,
		requests: prometheus.NewDesc("sluice_requests_total",
			"Requests answered on a route, by client and HTTP status: 2xx were accepted (the route's ack status), the others refused. "+
				"Client is \"\" without auth; preflights and unknown paths are not counted.",
			[]string{"route", "client", "code"}, nil),
		requestBytes: prometheus.NewDesc("sluice_request_bytes_total",
			"Bytes of the request bodies accepted on a route, by client, as received.",
			[]string{"route", "client"}, nil),
		deliveries: prometheus.NewDesc("sluice_deliveries_total",
			"Delivery outcomes by backend in this process: succeeded (2xx); failed (a terminal status, or retries exhausted); "+
				"retried (an attempt failed and a retry was queued); dead_lettered (retries exhausted, also counted as failed).",
			[]string{"backend", "outcome"}, nil),
		attempts: prometheus.NewDesc("sluice_delivery_attempts_total",
			"HTTP attempts to deliver to the backend in this process, retries included.",
			b, nil),
		duration: prometheus.NewDesc("sluice_delivery_duration_seconds",
			"How long delivery attempts to the backend took: from sending the request to reading its response, "+
				"its network error or its timeout.",
			b, nil),
		queueDepth: prometheus.NewDesc("sluice_queue_depth",
			"Requests waiting for the backend in its queue (the whole backend, every process's share).",
			b, nil),
		backlogSeconds: prometheus.NewDesc("sluice_backlog_seconds",
			"How long a request queued now waits before it is delivered: the queue depth over the measured drain rate "+
				"(the Retry-After estimate); a queue that has not moved for 2s adds a minute.",
			b, nil),
		concurrency: prometheus.NewDesc("sluice_backend_concurrency",
			"Deliveries to the backend this process may have in flight now: the concurrency limit after this process's share.",
			b, nil),
		rate: prometheus.NewDesc("sluice_backend_rate",
			"Deliveries per second to the backend this process may make now (its share of the rate setting); 0 is unlimited.",
			b, nil),
		inFlight: prometheus.NewDesc("sluice_in_flight",
			"Deliveries to the backend under way in this process.",
			b, nil),
		breakerOpen: prometheus.NewDesc("sluice_breaker_open",
			"1 while the backend's circuit breaker is open (holding deliveries back until its cooldown ends), 0 while closed or half-open.",
			b, nil),
		paused: prometheus.NewDesc("sluice_backend_paused",
			"1 while deliveries to the backend are paused, else 0.",
			b, nil),
	}
	for _, d := range workers.LatencyBounds() {
		c.bounds = append(c.bounds, d.Seconds())
	}
	return c
}

func (c *collector) descs() []*prometheus.Desc {
	return []*prometheus.Desc{c.requests, c.requestBytes, c.deliveries, c.attempts, c.duration,
		c.queueDepth, c.backlogSeconds, c.concurrency, c.rate, c.inFlight, c.breakerOpen, c.paused}
}

// Describe sends every series' description.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs() {
		ch <- d
	}
}

// Collect reads the sources once and sends every series.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	if c.src.Backends != nil {
		for _, name := range c.src.Backends.Names() {
			if st, ok := c.src.Backends.Status(name); ok {
				c.backend(ch, name, st)
			}
		}
	}
	if c.src.Meter != nil {
		for _, a := range c.src.Meter.ByStatus() {
			for code, n := range a.ByStatus {
				ch <- prometheus.MustNewConstMetric(c.requests, prometheus.CounterValue, float64(n), a.Route, a.Client, strconv.Itoa(code))
			}
			ch <- prometheus.MustNewConstMetric(c.requestBytes, prometheus.CounterValue, float64(a.Bytes), a.Route, a.Client)
		}
	}
}

func (c *collector) backend(ch chan<- prometheus.Metric, name string, st workers.Status) {
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), append([]string{name}, labels...)...)
	}
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, name)
	}
	if c.src.Backlog != nil {
		est := c.src.Backlog.Estimate(broker.RequestTopic(name), st.Rate, st.Concurrency)
		gauge(c.queueDepth, float64(est.Depth))
		gauge(c.backlogSeconds, est.Wait.Seconds())
	}
	if c.src.QueueOnly {
		return
	}
	counter(c.deliveries, st.Succeeded, Succeeded)
	counter(c.deliveries, st.Failed, Failed)
	counter(c.deliveries, st.Retried, Retried)
	counter(c.deliveries, st.DeadLettered, DeadLettered)
	counter(c.attempts, st.Attempts)

	buckets := make(map[float64]uint64, len(c.bounds))
	for i, le := range c.bounds {
		buckets[le] = st.Latency.Buckets[i]
	}
	ch <- prometheus.MustNewConstHistogram(c.duration, st.Latency.Count, st.Latency.Sum.Seconds(), buckets, name)
	gauge(c.concurrency, float64(st.Limit))
	gauge(c.rate, st.Rate*st.Share)
	gauge(c.inFlight, float64(st.InFlight))
	// Open only: a half-open breaker with nothing to probe (an idle
	// backend that recovered) is not holding anything back.
	gauge(c.breakerOpen, oneIf(st.Breaker == "open"))
	gauge(c.paused, oneIf(st.Paused))
}

func oneIf(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
