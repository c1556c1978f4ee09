package workers

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/sluice-gw/sluice/config"
	"github.com/sluice-gw/sluice/wire"
)

// TestLatencyBuckets: each duration lands in the first bucket whose bound
// holds it (a bound is inclusive), buckets are cumulative, and Count and
// Sum take every observation, the unbounded ones included.
func TestLatencyBuckets(t *testing.T) {
	t.Parallel()
	h := &latencyHist{}
	for _, d := range []time.Duration{0, time.Millisecond, time.Millisecond + 1, 7 * time.Millisecond, time.Minute, 2 * time.Minute} {
		h.observe(d)
	}
	l := h.snapshot()
	bounds := LatencyBounds()
	if len(bounds) != LatencyBuckets || bounds[0] != time.Millisecond || bounds[LatencyBuckets-1] != time.Minute {
		t.Fatalf("bounds %v", bounds)
	}
	want := map[time.Duration]uint64{ // bound -> cumulative count
		time.Millisecond:        2, // 0 and 1ms
		2500 * time.Microsecond: 3,
		5 * time.Millisecond:    3,
		10 * time.Millisecond:   4,
		30 * time.Second:        4,
		time.Minute:             5,
	}
	for i, b := range bounds {
		if n, ok := want[b]; ok && l.Buckets[i] != n {
			t.Errorf("bucket <= %v: %d, want %d", b, l.Buckets[i], n)
		}
		if i > 0 && l.Buckets[i] < l.Buckets[i-1] {
			t.Errorf("buckets not cumulative at %v: %v", b, l.Buckets)
		}
	}
	if l.Count != 6 {
		t.Errorf("count %d, want 6", l.Count)
	}
	if wantSum := 3*time.Minute + 9*time.Millisecond + 1; l.Sum != wantSum {
		t.Errorf("sum %v, want %v", l.Sum, wantSum)
	}
	var off *latencyHist // metrics: false
	off.observe(time.Second)
	if off.snapshot() != (Latency{}) {
		t.Error("a nil histogram recorded something")
	}
}

// TestLatencyQuantile: quantiles of the attempts between two snapshots,
// interpolated within a bucket the way histogram_quantile does.
func TestLatencyQuantile(t *testing.T) {
	t.Parallel()
	h := &latencyHist{}
	for range 100 {
		h.observe(3 * time.Second) // before the window: must not count
	}
	prev := h.snapshot()
	// 90 attempts in (10ms, 25ms], 10 in (300ms, 400ms].
	for range 90 {
		h.observe(20 * time.Millisecond)
	}
	for range 10 {
		h.observe(400 * time.Millisecond)
	}
	cur := h.snapshot()
	cases := []struct {
		name string
		q    float64
		want time.Duration
	}{
		{"p50: 50 of the 10-25ms bucket's 90", 0.5, 10*time.Millisecond + 15*time.Millisecond*50/90},
		{"p90: the top of 10-25ms", 0.9, 25 * time.Millisecond},
		{"p99: nine tenths into 300-400ms", 0.99, 300*time.Millisecond + 100*time.Millisecond*9/10},
		{"p100", 1, 400 * time.Millisecond},
		{"p0: the bottom of the first bucket used", 0, 10 * time.Millisecond},
		{"q above 1 is 1", 7, 400 * time.Millisecond},
	}
	for _, c := range cases {
		got := LatencyQuantile(prev, cur, c.q)
		if d := got - c.want; d < -time.Microsecond || d > time.Microsecond {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
	if got := LatencyQuantile(cur, cur, 0.5); got != 0 {
		t.Errorf("no attempts in the window: %v, want 0", got)
	}
	if got := LatencyQuantile(Latency{}, prev, 0.5); got <= 2500*time.Millisecond || got > 5*time.Second {
		t.Errorf("since the start (all 3s): %v, want within 2.5-5s", got)
	}
	if got := LatencyQuantile(cur, prev, 0.5); got <= 2500*time.Millisecond || got > 5*time.Second {
		t.Errorf("a cur older than prev is read from its start: %v", got)
	}
	slow := &latencyHist{}
	slow.observe(5 * time.Minute)
	if got := LatencyQuantile(Latency{}, slow.snapshot(), 0.5); got != time.Minute {
		t.Errorf("past the last bound: %v, want the last bound", got)
	}
}

// TestLatencyConcurrent: observations from many goroutines are all
// counted (run with -race).
func TestLatencyConcurrent(t *testing.T) {
	t.Parallel()
	h := &latencyHist{}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 1000 {
				h.observe(time.Duration(g*i) * time.Microsecond)
				if i%100 == 0 {
					_ = h.snapshot()
				}
			}
		})
	}
	wg.Wait()
	if l := h.snapshot(); l.Count != 8000 {
		t.Fatalf("count %d, want 8000", l.Count)
	}
}

// TestDeliverRecordsLatency: every attempt that reached the backend is
// observed once in the pool's histogram and shows in Status; one sluice
// could not send is not; metrics: false records nothing.
func TestDeliverRecordsLatency(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		time.Sleep(30 * time.Millisecond)
		w.WriteHeader(503)
	}))
	defer srv.Close()
	for _, on := range []bool{true, false} {
		cfg, err := config.Parse([]byte(`
metrics: `+map[bool]string{true: "true", false: "false"}[on]+`
routes: [{name: r, path: /r, backend: b}]
backends: [{name: b, urls: ["`+srv.URL+`"], retry: {max_attempts: 3, initial_backoff: 10ms}}]
`), ".")
		if err != nil {
			t.Fatal(err)
		}
		br := &fakeBroker{}
		m := NewManager(cfg, nil, zerolog.Nop())
		p := m.pools["b"]
		p.broker = br
		for _, id := range []string{"a", "b"} {
			d := &fakeDelivery{msg: wire.EncodeRequest(request(id)), log: &actionLog{}}
			permit, _ := p.lim.Acquire(context.Background())
			p.deliver(context.Background(), d, permit)
		}
		bad := request("c")
		bad.Header = [][2]string{{"Bad Name", "v"}} // never sent
		permit, _ := p.lim.Acquire(context.Background())
		p.deliver(context.Background(), &fakeDelivery{msg: wire.EncodeRequest(bad), log: &actionLog{}}, permit)

		st, _ := m.Status("b")
		if st.Attempts != 3 || st.Retried != 2 {
			t.Fatalf("metrics %v: attempts %d retried %d, want 3 and 2", on, st.Attempts, st.Retried)
		}
		if !on {
			if st.Latency != (Latency{}) {
				t.Fatalf("metrics: false recorded %+v", st.Latency)
			}
			continue
		}
		l := st.Latency
		if l.Count != 2 || l.Sum < 60*time.Millisecond || l.Buckets[0] != 0 {
			t.Fatalf("latency %+v, want 2 attempts of about 30ms", l)
		}
		if q := LatencyQuantile(Latency{}, l, 0.5); q < 25*time.Millisecond || q > 250*time.Millisecond {
			t.Fatalf("p50 %v, want about 30ms (25-250ms)", q)
		}
		if st.Limit != 16 {
			t.Fatalf("concurrency limit %d, want the configured 16", st.Limit)
		}
		p.lim.SetShare(0.5)
		if st, _ := m.Status("b"); st.Limit != 8 || st.Concurrency != 16 {
			t.Fatalf("with a share of 0.5: limit %d, concurrency %d; want 8 and 16", st.Limit, st.Concurrency)
		}
	}
}

// BenchmarkLatencyObserve is the per-attempt cost the histogram adds.
func BenchmarkLatencyObserve(b *testing.B) {
	h := &latencyHist{}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		d := time.Duration(0)
		for pb.Next() {
			h.observe(d)
			d = (d + 7*time.Millisecond) % (2 * time.Minute)
		}
	})
}
