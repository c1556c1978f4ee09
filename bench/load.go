package main

import (
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// payload is the 1 KiB JSON body every part submits or publishes.
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

// An op is one call of a closed loop: an HTTP request answered with its
// status, or a broker publish answered with 200 once confirmed. An error is
// a call that got no answer (transport error, refused publish).
type op func() (status int, err error)

// A loadSpec bounds one measurement: conns goroutines call op one call after
// another until dur has passed or maxCalls calls were started, whichever
// comes first. Warm-up, if any, runs the same way for warmup before the
// measured run and is not counted.
type loadSpec struct {
	conns    int
	dur      time.Duration
	maxCalls int64 // 0: bounded by dur alone
	warmup   time.Duration
	// cpu, if set, returns the CPU time used so far by the process under
	// test, to report CPU per call.
	cpu func() time.Duration
}

// A loadResult is what one measured run saw.
type loadResult struct {
	calls     int // answered with a status
	byStatus  map[int]int
	errors    int // no answer
	elapsed   time.Duration
	latencies []time.Duration // of 2xx answers, sorted
	cpu       time.Duration   // used by the process under test; 0: not measured
}

// ok is the number of 2xx answers.
func (r loadResult) ok() int { return len(r.latencies) }

// rps is answered calls per second, 2xx or not.
func (r loadResult) rps() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.calls) / r.elapsed.Seconds()
}

// pct is the p-quantile (0..1) of the 2xx latencies.
func (r loadResult) pct(p float64) time.Duration {
	if len(r.latencies) == 0 {
		return 0
	}
	return r.latencies[min(len(r.latencies)-1, int(float64(len(r.latencies))*p))]
}

// cpuPerCall is the CPU time of the process under test per answered call,
// 0 when not measured.
func (r loadResult) cpuPerCall() time.Duration {
	if r.cpu <= 0 || r.calls == 0 {
		return 0
	}
	return r.cpu / time.Duration(r.calls)
}

// measure runs o under spec: warm-up first, then the measured run.
func measure(spec loadSpec, o op) loadResult {
	if spec.warmup > 0 {
		closedLoop(spec.conns, spec.warmup, spec.maxCalls, o)
	}
	var cpu0 time.Duration
	if spec.cpu != nil {
		cpu0 = spec.cpu()
	}
	r := closedLoop(spec.conns, spec.dur, spec.maxCalls, o)
	if spec.cpu != nil {
		r.cpu = spec.cpu() - cpu0
	}
	return r
}

// closedLoop calls o from c goroutines, one call after another, for at
// most d and at most maxCalls calls in all (0: no count bound).
func closedLoop(c int, d time.Duration, maxCalls int64, o op) loadResult {
	if maxCalls <= 0 {
		maxCalls = math.MaxInt64
	}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		started atomic.Int64
	)
	res := loadResult{byStatus: map[int]int{}}
	start := time.Now()
	stop := start.Add(d)
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lat []time.Duration
			by := map[int]int{}
			errs := 0
			for time.Now().Before(stop) && started.Add(1) <= maxCalls {
				t0 := time.Now()
				status, err := o()
				if err != nil {
					errs++
					continue
				}
				by[status]++
				if status >= 200 && status < 300 {
					lat = append(lat, time.Since(t0))
				}
			}
			mu.Lock()
			defer mu.Unlock()
			res.latencies = append(res.latencies, lat...)
			for k, v := range by {
				res.byStatus[k] += v
				res.calls += v
			}
			res.errors += errs
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	slices.Sort(res.latencies)
	return res
}

// post returns an op posting payload to http://addr+path over at most conns
// connections.
func post(addr, path string, conns int) op { return postWith(addr, path, conns, nil) }

// postWith is post with more request headers.
func postWith(addr, path string, conns int, hdr [][2]string) op {
	hc := &fasthttp.HostClient{Addr: addr, MaxConns: conns, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second}
	uri := "http://" + addr + path
	return func() (int, error) {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(resp)
		req.SetRequestURI(uri)
		req.Header.SetMethod("POST")
		req.Header.SetContentType("application/json")
		req.SetBody(payload)
		for _, kv := range hdr {
			req.Header.Set(kv[0], kv[1])
		}
		if err := hc.Do(req, resp); err != nil {
			return 0, err
		}
		return resp.StatusCode(), nil
	}
}
