package admin

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/backlog"
	"github.com/sluice-gw/sluice/workers"
)

// fakeBackends reports statuses a test sets.
type fakeBackends struct {
	mu    sync.Mutex
	names []string
	st    map[string]workers.Status
}

var _ Backends = (*fakeBackends)(nil)

func newFakeBackends(names ...string) *fakeBackends {
	f := &fakeBackends{names: names, st: map[string]workers.Status{}}
	for _, n := range names {
		f.st[n] = workers.Status{Settings: workers.Settings{Rate: 10, Burst: 1, Concurrency: 8}, State: workers.State{Breaker: "closed", Share: 1, Limit: 4}}
	}
	return f
}

func (f *fakeBackends) Names() []string { return f.names }
func (f *fakeBackends) Status(name string) (workers.Status, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, ok := f.st[name]
	return st, ok
}
func (f *fakeBackends) Tune(name string, change func(*workers.Settings)) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, ok := f.st[name]
	if ok {
		change(&st.Settings)
		f.st[name] = st
	}
	return ok
}
func (f *fakeBackends) set(name string, change func(*workers.Status)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := f.st[name]
	change(&st)
	f.st[name] = st
}

// clock is a fake time that a test moves.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

func testHistory(window time.Duration, names ...string) (*History, *fakeBackends, *clock) {
	fb := newFakeBackends(names...)
	h := NewHistory(fb, fakeBacklog{backlog.Estimate{Depth: 7, Drain: 2, Wait: 4 * time.Second}}, 2*time.Second, window)
	c := &clock{t: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)}
	h.now = c.now
	return h, fb, c
}

func val(p *float64) any {
	if p == nil {
		return nil
	}
	return *p
}

// TestHistoryRates: a backend's first point has no rates (no interval
// before it); later ones are the counters' deltas over the time between
// samples, never negative; the rest is the backend object's figures.
func TestHistoryRates(t *testing.T) {
	h, fb, c := testHistory(time.Minute, "a")
	h.Sample()
	fb.set("a", func(s *workers.Status) {
		s.Succeeded, s.Failed, s.Retried, s.Attempts, s.DeadLettered = 10, 2, 4, 16, 1
		s.InFlight, s.Breaker, s.Paused, s.Rate = 3, "open", true, 25
		// 10 attempts between the samples: 9 in (5, 10] ms, 1 in (400, 500] ms.
		for i, b := range workers.LatencyBounds() {
			switch {
			case b > 400*time.Millisecond:
				s.Latency.Buckets[i] = 10
			case b >= 10*time.Millisecond:
				s.Latency.Buckets[i] = 9
			}
		}
		s.Latency.Count = 10
	})
	c.advance(2 * time.Second)
	h.Sample()
	fb.set("a", func(s *workers.Status) { s.Succeeded = 3 }) // a counter that went back (a restart)
	c.advance(4 * time.Second)
	h.Sample()

	got := h.Snapshot(time.Time{})
	if len(got) != 1 || got[0].Name != "a" || len(got[0].Points) != 3 {
		t.Fatalf("snapshot %+v", got)
	}
	p0, p1, p2 := got[0].Points[0], got[0].Points[1], got[0].Points[2]
	if p0.DeliveredPerSecond != nil || p0.FailedPerSecond != nil || p0.AttemptsPerSecond != nil {
		t.Fatalf("first point has rates: %+v", p0)
	}
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"delivered", val(p1.DeliveredPerSecond), 5.0},
		{"failed", val(p1.FailedPerSecond), 1.0},
		{"retried", val(p1.RetriedPerSecond), 2.0},
		{"attempts", val(p1.AttemptsPerSecond), 8.0},
		{"dead-lettered", val(p1.DeadLetteredPerSecond), 0.5},
		{"delivered after a restart", val(p2.DeliveredPerSecond), 0.0},
		{"failed over 4 s", val(p2.FailedPerSecond), 0.0},
		{"latency p50", val(p1.LatencyP50Ms), 7.8},
		{"latency p99", val(p1.LatencyP99Ms), 490.0},
		{"latency p50 without attempts", val(p2.LatencyP50Ms), nil},
		{"queue depth", p1.QueueDepth, int64(7)},
		{"backlog", p1.BacklogSeconds, 4.0},
		{"in flight", p1.InFlight, 3},
		{"concurrency: the limit in force, not the ceiling", p1.Concurrency, 4},
		{"rate", p1.Rate, 25.0},
		{"breaker", p1.Breaker, "open"},
		{"paused", p1.Paused, true},
		{"at", p1.At, time.Date(2025, 3, 1, 12, 0, 2, 0, time.UTC)},
	} {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", c.name, c.got, c.want)
		}
	}
}

// TestHistoryRing: the ring keeps window/interval points a backend, oldest
// first, and since leaves out what a client has.
func TestHistoryRing(t *testing.T) {
	h, _, c := testHistory(10*time.Second, "a", "b") // 5 points
	start := c.t
	cases := []struct {
		name    string
		samples int
		since   time.Time
		want    []int // the seconds after start of the points
	}{
		{"empty", 0, time.Time{}, nil},
		{"one", 1, time.Time{}, []int{0}},
		{"not full", 3, time.Time{}, []int{0, 2, 4}},
		{"just full", 5, time.Time{}, []int{0, 2, 4, 6, 8}},
		{"wrapped", 7, time.Time{}, []int{4, 6, 8, 10, 12}},
		{"wrapped twice", 13, time.Time{}, []int{16, 18, 20, 22, 24}},
		{"since the middle", 7, start.Add(8 * time.Second), []int{10, 12}},
		{"since the newest", 7, start.Add(12 * time.Second), nil},
		{"since before the oldest", 7, start.Add(-time.Hour), []int{4, 6, 8, 10, 12}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h2 := NewHistory(h.backends, h.backlog, h.interval, 10*time.Second)
			c.t = start
			h2.now = c.now
			for range tc.samples {
				h2.Sample()
				c.advance(2 * time.Second)
			}
			got := h2.Snapshot(tc.since)
			if len(got) != 2 || got[0].Name != "a" || got[1].Name != "b" {
				t.Fatalf("backends %+v", got)
			}
			for _, bh := range got {
				var secs []int
				for _, p := range bh.Points {
					secs = append(secs, int(p.At.Sub(start)/time.Second))
				}
				if len(secs) != len(tc.want) || (len(secs) > 0 && !equalInts(secs, tc.want)) {
					t.Fatalf("%s: points at %v, want %v", bh.Name, secs, tc.want)
				}
			}
		})
	}
	if h.Window() != 10*time.Second || h.Interval() != 2*time.Second {
		t.Fatalf("window %v interval %v", h.Window(), h.Interval())
	}
}

func equalInts(a, b []int) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestHistoryEndpoint: GET /admin/history in its shape, ?since, a bad
// since, and a process without a history.
func TestHistoryEndpoint(t *testing.T) {
	h, _ := testHandler(t, "")
	if resp, _ := serve(h, "GET", "/admin/history", "", nil); resp.StatusCode != 404 {
		t.Fatalf("without a history: %d", resp.StatusCode)
	}
	hist := NewHistory(h.Backends, h.Backlog, 2*time.Second, 10*time.Minute)
	c := &clock{t: time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC)}
	hist.now = c.now
	h.History = hist
	hist.Sample()
	c.advance(2 * time.Second)
	hist.Sample()

	resp, body := serve(h, "GET", "/admin/history", "", nil)
	want := `{"interval_seconds":2,"window_seconds":600,"backends":[{"name":"logs","points":[` +
		`{"at":"2025-03-01T12:00:00.123Z","delivered_per_second":null,"failed_per_second":null,"retried_per_second":null,"attempts_per_second":null,"dead_lettered_per_second":null,"latency_p50_ms":null,"latency_p99_ms":null,"queue_depth":12,"backlog_seconds":3.3,"in_flight":0,"concurrency":8,"rate":20,"breaker":"closed","paused":false},` +
		`{"at":"2025-03-01T12:00:02.123Z","delivered_per_second":0,"failed_per_second":0,"retried_per_second":0,"attempts_per_second":0,"dead_lettered_per_second":0,"latency_p50_ms":null,"latency_p99_ms":null,"queue_depth":12,"backlog_seconds":3.3,"in_flight":0,"concurrency":8,"rate":20,"breaker":"closed","paused":false}]}]}`
	if resp.StatusCode != 200 || strings.TrimSpace(body) != want {
		t.Fatalf("got %d\n%s\nwant\n%s", resp.StatusCode, body, want)
	}

	_, body = serve(h, "GET", "/admin/history?since=2025-03-01T12:00:00.123Z", "", nil)
	var got historyBody
	if err := json.Unmarshal([]byte(body), &got); err != nil || len(got.Backends) != 1 || len(got.Backends[0].Points) != 1 ||
		!got.Backends[0].Points[0].At.Equal(time.Date(2025, 3, 1, 12, 0, 2, 123000000, time.UTC)) {
		t.Fatalf("since: %s %v", body, err)
	}
	if resp, body := serve(h, "GET", "/admin/history?since=yesterday", "", nil); resp.StatusCode != 400 || !strings.Contains(body, "RFC 3339") {
		t.Fatalf("bad since: %d %s", resp.StatusCode, body)
	}
}

// TestHistoryRun: Run samples at once and then each interval, and ends
// with its context.
func TestHistoryRun(t *testing.T) {
	fb := newFakeBackends("a")
	h := NewHistory(fb, fakeBacklog{}, 20*time.Millisecond, time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for len(h.Snapshot(time.Time{})[0].Points) < 3 {
		if time.Now().After(deadline) {
			t.Fatal("Run took fewer than 3 samples in 5 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not end with its context")
	}
}
