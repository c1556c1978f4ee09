package workers

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/internal/stacks"
	"github.com/sluice-gw/sluice/internal/wait"
	"github.com/sluice-gw/sluice/job"
)

func TestClassify(t *testing.T) {
	t.Parallel()
	on := []int{429, 503}
	cases := []struct {
		name   string
		status int
		err    error
		want   Verdict
	}{
		{"200", 200, nil, Success},
		{"204", 204, nil, Success},
		{"configured 503", 503, nil, Retry},
		{"configured 429", 429, nil, Retry},
		{"unconfigured 500", 500, nil, Terminal},
		{"400", 400, nil, Terminal},
		{"301 is terminal", 301, nil, Terminal},
		{"network error", 0, errors.New("connection refused"), Retry},
		{"timeout", 0, context.DeadlineExceeded, Retry},
		{"request sluice cannot build", 0, fmt.Errorf("%w: header", errBuild), Terminal},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := Classify(c.status, c.err, on); got != c.want {
				t.Fatalf("got %v, want %v", got, c.want)
			}
		})
	}
}

func TestBackoffBounds(t *testing.T) {
	t.Parallel()
	initial, maxW := 200*time.Millisecond, 5*time.Second
	for attempt := 1; attempt <= 12; attempt++ {
		ceil := initial << (attempt - 1)
		if ceil > maxW || ceil <= 0 {
			ceil = maxW
		}
		lo := Backoff(attempt, initial, maxW, func(int64) int64 { return 0 })
		hi := Backoff(attempt, initial, maxW, func(n int64) int64 { return n - 1 })
		if lo != initial {
			t.Errorf("attempt %d: lowest %v, want %v", attempt, lo, initial)
		}
		if hi != ceil {
			t.Errorf("attempt %d: highest %v, want %v", attempt, hi, ceil)
		}
	}
	if got := Backoff(1000, initial, maxW, func(n int64) int64 { return n - 1 }); got != maxW {
		t.Errorf("huge attempt: %v, want cap %v", got, maxW)
	}
}

func TestRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Now()
	limit := 30 * time.Second
	cases := []struct {
		name, value string
		want        time.Duration
	}{
		{"seconds", "3", 3 * time.Second},
		{"padded", " 3 ", 3 * time.Second},
		{"over max_backoff", "120", limit},
		{"years", "999999999", limit},
		{"overflows int64 nanoseconds", "99999999999999999", limit},
		{"beyond uint64", "999999999999999999999999", 0},
		{"date", now.Add(10 * time.Second).UTC().Format(http.TimeFormat), 10 * time.Second},
		{"far date", now.Add(24 * time.Hour).UTC().Format(http.TimeFormat), limit},
		{"past date", now.Add(-time.Hour).UTC().Format(http.TimeFormat), 0},
		{"garbage", "soon", 0},
		{"negative", "-5", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := http.Header{}
			h.Set("Retry-After", c.value)
			got := retryAfter(h, now, limit)
			if got < c.want-2*time.Second || got > c.want || (c.want == 0 && got != 0) {
				t.Fatalf("Retry-After %q: %v, want %v", c.value, got, c.want)
			}
		})
	}
}

// TestLimiterRate checks the token bucket's precision: with burst 1 at
// 50/s, 40 permits take 39/50 s, and none comes sooner than the bucket allows.
func TestLimiterRate(t *testing.T) {
	l := NewLimiter(Settings{Rate: 50, Burst: 1, Concurrency: 100}, 0, 0)
	ctx := context.Background()
	start := time.Now()
	for range 40 {
		p, err := l.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		p.Done(true)
	}
	el := time.Since(start)
	want := 39 * time.Second / 50
	if el < want-20*time.Millisecond || el > want+150*time.Millisecond {
		t.Fatalf("40 permits at 50/s took %v, want about %v", el, want)
	}
}

func TestLimiterConcurrency(t *testing.T) {
	t.Parallel()
	l := NewLimiter(Settings{Concurrency: 3}, 0, 0)
	var cur, peak atomic.Int64
	var wg sync.WaitGroup
	for range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := l.Acquire(context.Background())
			if err != nil {
				t.Error(err)
				return
			}
			n := cur.Add(1)
			for {
				old := peak.Load()
				if n <= old || peak.CompareAndSwap(old, n) {
					break
				}
			}
			time.Sleep(5 * time.Millisecond)
			cur.Add(-1)
			p.Done(true)
		}()
	}
	wg.Wait()
	if peak.Load() != 3 {
		t.Fatalf("peak in flight %d, want 3", peak.Load())
	}
}

// TestLimiterLiveChange: a waiter blocked by a very slow rate, or by pause,
// is released within 1 s of the change.
func TestLimiterLiveChange(t *testing.T) {
	l := NewLimiter(Settings{Rate: 0.01, Burst: 1, Concurrency: 1}, 0, 0)
	p, _ := l.Acquire(context.Background()) // takes the only token
	p.Done(true)
	got := make(chan time.Time, 1)
	go func() {
		p, err := l.Acquire(context.Background())
		if err == nil {
			p.Done(true)
		}
		got <- time.Now()
	}()
	// The waiter is parked in Acquire before the change, not yet to come.
	wait.For(t, 5*time.Second, "the waiter blocked in Acquire", func() bool {
		return len(stacks.Matching(func(g string) bool {
			return strings.Contains(g, "TestLimiterLiveChange.func") && strings.Contains(g, "(*Limiter).") &&
				strings.Contains(g, " [select")
		})) > 0
	})
	changed := time.Now()
	l.Set(Settings{Rate: 1000, Burst: 1, Concurrency: 1})
	select {
	case at := <-got:
		if d := at.Sub(changed); d > time.Second {
			t.Fatalf("released %v after the change", d)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("rate change did not release the waiter")
	}

	l.Set(Settings{Concurrency: 1, Paused: true})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := l.Acquire(ctx); err == nil {
		t.Fatal("paused limiter admitted a delivery")
	}
	l.Set(Settings{Concurrency: 1})
	if _, err := l.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestBreaker(t *testing.T) {
	t.Parallel()
	now := time.Now()
	l := NewLimiter(Settings{Concurrency: 10}, 3, 5*time.Second)
	l.now = func() time.Time { return now }
	ctx := context.Background()
	for range 3 {
		p, _ := l.Acquire(ctx)
		p.Done(false)
	}
	if s := l.State().Breaker; s != "open" {
		t.Fatalf("after 3 failures breaker is %s", s)
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if _, err := l.Acquire(short); err == nil {
		t.Fatal("open breaker admitted a delivery")
	}
	now = now.Add(6 * time.Second) // cooldown over: one probe
	probe, err := l.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	short2, cancel2 := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel2()
	if _, err := l.Acquire(short2); err == nil {
		t.Fatal("a second delivery passed while the probe was out")
	}
	probe.Done(true)
	if s := l.State().Breaker; s != "closed" {
		t.Fatalf("after a good probe breaker is %s", s)
	}
}

func TestTarget(t *testing.T) {
	t.Parallel()
	u1, _ := url.Parse("http://a/ingest")
	u2, _ := url.Parse("http://b/base/?k=v")
	p := &Pool{urls: []*url.URL{u1, u2}}
	r := &job.Request{Path: "x/y", Query: "q=1"}
	if got := p.target(r, 0); got != "http://a/ingest/x/y?q=1" {
		t.Errorf("first target %s", got)
	}
	if got := p.target(r, 1); got != "http://b/base/x/y?k=v&q=1" {
		t.Errorf("second target %s", got)
	}
	if got := p.target(&job.Request{}, 0); got != "http://a/ingest" {
		t.Errorf("exact route target %s", got)
	}
}

// TestLimiterShare: with half of the backend's partitions, a process
// delivers at half the rate and half the concurrency.
func TestLimiterShare(t *testing.T) {
	l := NewLimiter(Settings{Rate: 100, Burst: 1, Concurrency: 8}, 0, 0)
	l.SetShare(0.5)
	if s := l.Settings(); s.Rate != 100 || s.Concurrency != 8 {
		t.Fatalf("configured settings changed: %+v", s)
	}
	ctx := context.Background()
	var held []*Permit
	for range 4 {
		p, _ := l.Acquire(ctx)
		held = append(held, p)
	}
	if l.TryAcquire() != nil {
		t.Fatal("a fifth permit with half of concurrency 8")
	}
	for _, p := range held {
		p.Done(true)
	}
	start := time.Now()
	for range 21 {
		p, _ := l.Acquire(ctx)
		p.Done(true)
	}
	if el := time.Since(start); el < 350*time.Millisecond {
		t.Fatalf("21 permits at half of 100/s took %v, want about 400ms", el)
	}
}
