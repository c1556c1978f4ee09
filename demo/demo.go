package demo

import (
	"encoding/json"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Options shape the backend's behaviour.
type Options struct {
	Capacity   int           // requests in progress at once; 0 = unlimited
	Rate       float64       // requests per second; 0 = unlimited
	Latency    time.Duration // time per request
	Jitter     time.Duration // up to this much more, at random
	FailRate   float64       // share of requests answered 503, 0..1
	RetryAfter int           // seconds, sent with 429; default 1
}

// Backend is the demo backend's handler.
type Backend struct {
	opts     Options
	lim      *rate.Limiter
	inflight atomic.Int64

	mu       sync.Mutex
	counts   map[int]int64
	received int64
}

// New builds a backend.
func New(o Options) *Backend {
	if o.RetryAfter <= 0 {
		o.RetryAfter = 1
	}
	b := &Backend{opts: o, counts: map[int]int64{}}
	if o.Rate > 0 {
		b.lim = rate.NewLimiter(rate.Limit(o.Rate), max(1, int(o.Rate)))
	}
	return b
}

// Stats are the backend's counts.
type Stats struct {
	Received int64            `json:"received"`
	ByStatus map[string]int64 `json:"by_status"`
	InFlight int64            `json:"in_flight"`
}

// Stats returns the counts so far.
func (b *Backend) Stats() Stats {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := Stats{Received: b.received, ByStatus: map[string]int64{}, InFlight: b.inflight.Load()}
	for k, v := range b.counts {
		s.ByStatus[strconv.Itoa(k)] = v
	}
	return s
}

func (b *Backend) count(status int) {
	b.mu.Lock()
	b.counts[status]++
	b.mu.Unlock()
}

func (b *Backend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/stats" && r.Method == http.MethodGet {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(b.Stats())
		return
	}
	n, _ := io.Copy(io.Discard, r.Body)
	b.mu.Lock()
	b.received++
	b.mu.Unlock()
	n0 := b.inflight.Add(1)
	defer b.inflight.Add(-1)
	if (b.opts.Capacity > 0 && n0 > int64(b.opts.Capacity)) || (b.lim != nil && !b.lim.Allow()) {
		b.count(429)
		w.Header().Set("Retry-After", strconv.Itoa(b.opts.RetryAfter))
		http.Error(w, "over capacity", http.StatusTooManyRequests)
		return
	}
	d := b.opts.Latency
	if b.opts.Jitter > 0 {
		d += time.Duration(rand.Int64N(int64(b.opts.Jitter)))
	}
	select {
	case <-time.After(d):
	case <-r.Context().Done():
		return
	}
	if b.opts.FailRate > 0 && rand.Float64() < b.opts.FailRate {
		b.count(503)
		http.Error(w, "temporarily failing", http.StatusServiceUnavailable)
		return
	}
	b.count(200)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"stored": true, "bytes": n, "request_id": r.Header.Get("X-Request-Id"),
		"attempt": r.Header.Get("X-Sluice-Attempt"),
	})
}
