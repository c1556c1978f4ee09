package admin

import (
	"context"
	"math"
	"sync"
	"time"

	"github.com/sluice-gw/sluice/cluster"
	"github.com/sluice-gw/sluice/workers"
)

// The history the dashboard draws: one point every HistoryInterval, kept
// for HistoryWindow.
const (
	HistoryInterval = 2 * time.Second
	HistoryWindow   = 10 * time.Minute
)

// Point is one backend's figures at one moment of the history. Rates are
// per second over the interval before At, from the deltas of the
// counters; they are null on a backend's first point, which has no
// interval.
type Point struct {
	At                    time.Time `json:"at"`
	DeliveredPerSecond    *float64  `json:"delivered_per_second"`
	FailedPerSecond       *float64  `json:"failed_per_second"`
	RetriedPerSecond      *float64  `json:"retried_per_second"`
	AttemptsPerSecond     *float64  `json:"attempts_per_second"`
	DeadLetteredPerSecond *float64  `json:"dead_lettered_per_second"`
	// LatencyP50Ms and LatencyP99Ms are the attempts' latencies in the
	// interval; null for an interval without attempts (and with
	// metrics: false, which records none).
	LatencyP50Ms   *float64 `json:"latency_p50_ms"`
	LatencyP99Ms   *float64 `json:"latency_p99_ms"`
	QueueDepth     int64    `json:"queue_depth"`
	BacklogSeconds float64  `json:"backlog_seconds"`
	InFlight       int      `json:"in_flight"`
	Concurrency    int      `json:"concurrency"` // the current limit
	Rate           float64  `json:"rate"`
	Breaker        string   `json:"breaker"`
	Paused         bool     `json:"paused"`
}

// BackendHistory is one backend's points, oldest first.
type BackendHistory struct {
	Name   string  `json:"name"`
	Points []Point `json:"points"`
}

// History samples every backend's status and backlog each interval into a
// ring that holds window, for GET /admin/history: a dashboard opened now
// shows the last minutes at once. NewHistory starts nothing; Run samples
// until its context ends.
type History struct {
	// Cluster, when set, gives every worker process's figures: a point
	// then shows the deployment's in-flight, concurrency limit and rates
	// (latency stays this process's). Set it before Run.
	Cluster interface {
		View(name string) (cluster.View, bool)
	}
	backends Backends
	backlog  Backlog
	interval time.Duration
	size     int // points per backend
	now      func() time.Time

	mu    sync.Mutex
	rings map[string]*ring
	prev  map[string]sampled // the last sample's counters, for the deltas
}

// sampled is what one sample read: the status and when.
type sampled struct {
	at time.Time
	st workers.Status
}

// ring holds a backend's last len(buf) points.
type ring struct {
	buf  []Point
	next int // where the next point goes
	full bool
}

func (r *ring) add(p Point) {
	r.buf[r.next] = p
	r.next = (r.next + 1) % len(r.buf)
	if r.next == 0 {
		r.full = true
	}
}

// after returns the points after since (all with a zero since), oldest
// first.
func (r *ring) after(since time.Time) []Point {
	out := []Point{}
	n, start := r.next, 0
	if r.full {
		n, start = len(r.buf), r.next
	}
	for i := range n {
		p := r.buf[(start+i)%len(r.buf)]
		if p.At.After(since) {
			out = append(out, p)
		}
	}
	return out
}

// NewHistory keeps window of points, one every interval, of each of
// backends' backends; it starts nothing.
func NewHistory(backends Backends, backlog Backlog, interval, window time.Duration) *History {
	h := &History{backends: backends, backlog: backlog, interval: interval, size: max(1, int(window/interval)),
		now: time.Now, rings: map[string]*ring{}, prev: map[string]sampled{}}
	for _, n := range backends.Names() {
		h.rings[n] = &ring{buf: make([]Point, h.size)}
	}
	return h
}

// Interval is the time between two points.
func (h *History) Interval() time.Duration { return h.interval }

// Window is how far back the history reaches once full.
func (h *History) Window() time.Duration { return time.Duration(h.size) * h.interval }

// Run takes a sample at once and then every interval until ctx ends.
func (h *History) Run(ctx context.Context) error {
	t := time.NewTicker(h.interval)
	defer t.Stop()
	for {
		h.Sample()
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Sample adds one point per backend, now.
func (h *History) Sample() {
	at := h.now()
	for _, name := range h.backends.Names() {
		st, ok := h.backends.Status(name)
		if !ok {
			continue
		}
		b := describe(name, st, h.backlog)
		p := Point{At: at.UTC().Truncate(time.Millisecond),
			QueueDepth: b.Stats.QueueDepth, BacklogSeconds: b.Stats.BacklogSeconds,
			InFlight: b.Stats.InFlight, Rate: b.Rate, Breaker: b.Stats.Breaker, Paused: b.Paused,
			Concurrency: b.Stats.ConcurrencyLimit, // the limit in force (SPEC §6)
		}
		// Every worker's figures, when the cluster has them, stand for
		// this process's in-flight, limit and rates.
		var view cluster.View
		clustered := false
		if h.Cluster != nil {
			view, clustered = h.Cluster.View(name)
		}
		if clustered {
			overCluster(&p, view)
		}
		h.mu.Lock()
		if prev, ok := h.prev[name]; ok {
			if dt := at.Sub(prev.at).Seconds(); dt > 0 {
				if !clustered {
					localRates(&p, prev.st, st, dt)
				}
				// The interval's quantiles come from the two samples'
				// difference, in milliseconds rounded to 0.1; nil for an
				// interval without attempts.
				if st.Latency.Count > prev.st.Latency.Count {
					p.LatencyP50Ms = ms(workers.LatencyQuantile(prev.st.Latency, st.Latency, 0.5))
					p.LatencyP99Ms = ms(workers.LatencyQuantile(prev.st.Latency, st.Latency, 0.99))
				}
			}
		}
		h.prev[name] = sampled{at: at, st: st}
		if r := h.rings[name]; r != nil {
			r.add(p)
		}
		h.mu.Unlock()
	}
}

// localRates puts into p this process's rates over the dt seconds between
// the statuses prev and cur.
func localRates(p *Point, prev, cur workers.Status, dt float64) {
	rate := func(prev, cur int64) *float64 {
		v := math.Round(float64(max(0, cur-prev))/dt*100) / 100 // a restarted counter is no negative rate
		return &v
	}
	p.DeliveredPerSecond = rate(prev.Succeeded, cur.Succeeded)
	p.FailedPerSecond = rate(prev.Failed, cur.Failed)
	p.RetriedPerSecond = rate(prev.Retried, cur.Retried)
	p.AttemptsPerSecond = rate(prev.Attempts, cur.Attempts)
	p.DeadLetteredPerSecond = rate(prev.DeadLettered, cur.DeadLettered)
}

// overCluster puts the figures of every worker process into p: the sums
// of their in-flight and limits, and of their rates over their last
// second.
func overCluster(p *Point, v cluster.View) {
	p.InFlight, p.Concurrency = v.InFlight, v.ConcurrencyLimit
	r := func(x float64) *float64 { return &x }
	p.DeliveredPerSecond, p.FailedPerSecond, p.RetriedPerSecond = r(v.DeliveredPerSecond), r(v.FailedPerSecond), r(v.RetriedPerSecond)
	p.AttemptsPerSecond, p.DeadLetteredPerSecond = r(v.AttemptsPerSecond), r(v.DeadLetteredPerSecond)
}

// Snapshot returns every backend's points after since (all with a zero
// since), oldest first, in the order of Backends.Names.
func (h *History) Snapshot(since time.Time) []BackendHistory {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := []BackendHistory{}
	for _, name := range h.backends.Names() {
		if r := h.rings[name]; r != nil {
			out = append(out, BackendHistory{Name: name, Points: r.after(since)})
		}
	}
	return out
}

// ms is d in milliseconds, rounded to 0.1.
func ms(d time.Duration) *float64 {
	v := math.Round(float64(d)/float64(time.Millisecond)*10) / 10
	return &v
}
