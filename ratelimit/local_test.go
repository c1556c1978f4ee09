package ratelimit

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

// clock is a fake monotonic clock safe for concurrent use.
type clock struct{ ns atomic.Int64 }

func (c *clock) now() int64              { return c.ns.Load() }
func (c *clock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// fakeLocal returns a Local on a fake clock that starts at 1 h.
func fakeLocal(maxKeys int) (*Local, *clock) {
	c := &clock{}
	c.advance(time.Hour)
	return newLocal(c.now, maxKeys), c
}

// step is one call in a scripted sequence: wait, then Allow, then expect.
type step struct {
	wait      time.Duration
	allowed   bool
	remaining int
	retry     time.Duration // RetryAfter
	reset     time.Duration
}

func TestLocalSequences(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		name  string
		limit Limit
		steps []step
	}{
		{"burst then refusals, remaining counts down", Limit{Rate: 1, Burst: 3}, []step{
			{allowed: true, remaining: 2, reset: 1 * time.Second},
			{allowed: true, remaining: 1, reset: 2 * time.Second},
			{allowed: true, remaining: 0, reset: 3 * time.Second},
			{allowed: false, retry: 1 * time.Second, reset: 3 * time.Second},
			{allowed: false, retry: 1 * time.Second, reset: 3 * time.Second},
		}},
		{"refill at rate", Limit{Rate: 10, Burst: 2}, []step{
			{allowed: true, remaining: 1, reset: 100 * ms},
			{allowed: true, remaining: 0, reset: 200 * ms},
			{allowed: false, retry: 100 * ms, reset: 200 * ms},
			{wait: 99 * ms, allowed: false, retry: 1 * ms, reset: 101 * ms},
			{wait: 1 * ms, allowed: true, remaining: 0, reset: 200 * ms},
			{allowed: false, retry: 100 * ms, reset: 200 * ms},
			// A long pause refills to the burst, no further.
			{wait: time.Hour, allowed: true, remaining: 1, reset: 100 * ms},
			{allowed: true, remaining: 0, reset: 200 * ms},
			{allowed: false, retry: 100 * ms, reset: 200 * ms},
		}},
		{"half a request per second", Limit{Rate: 0.5, Burst: 1}, []step{
			{allowed: true, remaining: 0, reset: 2 * time.Second},
			{allowed: false, retry: 2 * time.Second, reset: 2 * time.Second},
			{wait: 1999 * ms, allowed: false, retry: 1 * ms, reset: 1 * ms},
			{wait: 1 * ms, allowed: true, remaining: 0, reset: 2 * time.Second},
		}},
		{"2.5 per second", Limit{Rate: 2.5, Burst: 2}, []step{
			{allowed: true, remaining: 1, reset: 400 * ms},
			{allowed: true, remaining: 0, reset: 800 * ms},
			{allowed: false, retry: 400 * ms, reset: 800 * ms},
			{wait: 400 * ms, allowed: true, remaining: 0, reset: 800 * ms},
			{wait: 800 * ms, allowed: true, remaining: 1, reset: 400 * ms},
		}},
		{"burst below 1 is 1", Limit{Rate: 1, Burst: 0}, []step{
			{allowed: true, remaining: 0, reset: time.Second},
			{allowed: false, retry: time.Second, reset: time.Second},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, c := fakeLocal(defaultMaxKeys)
			for i, s := range tc.steps {
				c.advance(s.wait)
				got, err := l.Allow(context.Background(), "k", tc.limit)
				want := Result{Allowed: s.allowed, Limit: max(tc.limit.Burst, 1), Remaining: s.remaining, RetryAfter: s.retry, Reset: s.reset}
				if err != nil || got != want {
					t.Fatalf("step %d: got %+v, %v; want %+v", i, got, err, want)
				}
			}
		})
	}
}

// TestLocalKeysApart checks that keys have budgets of their own.
func TestLocalKeysApart(t *testing.T) {
	l, _ := fakeLocal(defaultMaxKeys)
	lim := Limit{Rate: 1, Burst: 1}
	for _, k := range []string{"route/a", "route/b", "other/a"} {
		if r := l.allow(k, lim); !r.Allowed {
			t.Fatalf("%s: first request refused: %+v", k, r)
		}
	}
	if r := l.allow("route/a", lim); r.Allowed {
		t.Fatalf("route/a: second request allowed: %+v", r)
	}
}

// TestLocalKeyCopied checks that Local keeps its own copy of a new key, so
// a caller may pass a string over a buffer it reuses.
func TestLocalKeyCopied(t *testing.T) {
	l, _ := fakeLocal(defaultMaxKeys)
	buf := []byte("client-a")
	key := unsafeString(buf)
	l.allow(key, Limit{Rate: 1, Burst: 1})
	copy(buf, "client-b")
	if r := l.allow("client-a", Limit{Rate: 1, Burst: 1}); r.Allowed {
		t.Fatalf("client-a's budget was lost when the caller's buffer changed: %+v", r)
	}
}

func TestLocalEvictsFullBuckets(t *testing.T) {
	const n = 100_000
	lim := Limit{Rate: 10, Burst: 1} // a bucket is full 100 ms after its request

	t.Run("growth", func(t *testing.T) {
		l, c := fakeLocal(defaultMaxKeys)
		peak := 0
		for i := range n {
			l.allow(fmt.Sprintf("client-%d", i), lim)
			c.advance(time.Millisecond) // ~100 keys not yet full at any time
			if i%1000 == 0 {
				peak = max(peak, l.len())
			}
		}
		// Each shard sweeps once it doubles or reaches minSweepLen.
		if bound := shardCount * minSweepLen; peak > bound || l.len() > bound {
			t.Fatalf("%d distinct keys: peak %d keys, now %d; want <= %d", n, peak, l.len(), bound)
		}
		t.Logf("%d distinct keys, ~100 not full at a time: at most %d held", n, peak)
	})

	t.Run("every minute", func(t *testing.T) {
		l, c := fakeLocal(defaultMaxKeys)
		for i := range 1000 { // ~16 a shard: no shard grows enough to sweep
			l.allow(fmt.Sprintf("old-%d", i), lim)
		}
		c.advance(sweepEvery)
		for i := range 1000 {
			l.allow(fmt.Sprintf("new-%d", i), lim)
		}
		if got := l.len(); got != 1000 {
			t.Fatalf("a minute later: %d keys, want the 1000 new ones", got)
		}
	})

	t.Run("cap", func(t *testing.T) {
		const maxKeys = 64 * 100
		l, _ := fakeLocal(maxKeys) // the clock stands still: no bucket refills
		heavy := Limit{Rate: 1, Burst: 10}
		for range heavy.Burst {
			l.allow("heavy", heavy) // its bucket is 10 s from full, the others' 0.1 s
		}
		for i := range n {
			l.allow(fmt.Sprintf("client-%d", i), lim)
		}
		if got := l.len(); got > maxKeys || got < maxKeys/2 {
			t.Fatalf("%d distinct keys, none full, cap %d: %d held", n, maxKeys, got)
		}
		if r := l.allow("heavy", heavy); r.Allowed {
			t.Fatalf("the emptiest bucket was shed to make room: %+v", r)
		}
	})
}

// TestLocalConcurrent runs Allow from many goroutines: on one key the
// budget is never overspent, while other keys come and go (swept when
// full, shed at the cap) alongside.
func TestLocalConcurrent(t *testing.T) {
	l, c := fakeLocal(64 * 100)
	const workers, calls, burst = 8, 2000, 100
	hot := Limit{Rate: 1, Burst: burst}
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range calls {
				if l.allow("hot", hot).Allowed {
					allowed.Add(1)
				}
				l.allow(fmt.Sprintf("w%d-%d", w, i), Limit{Rate: 1000, Burst: 1})
				if i%100 == 0 {
					c.advance(100 * time.Microsecond) // "hot" gains 0.016 requests in all
				}
			}
		})
	}
	wg.Wait()
	if got := allowed.Load(); got != burst {
		t.Fatalf("%d goroutines on one key: %d allowed, want the burst %d", workers, got, burst)
	}
}

func BenchmarkLocalAllow(b *testing.B) {
	for _, bc := range []struct {
		name  string
		limit Limit
	}{
		{"allowed", Limit{Rate: 1e9, Burst: 1}},
		{"refused", Limit{Rate: 1, Burst: 1}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			l := NewLocal()
			key := "logs/team-a"
			l.allow(key, bc.limit)
			b.ReportAllocs()
			for b.Loop() {
				l.allow(key, bc.limit)
			}
		})
	}
	b.Run("parallel", func(b *testing.B) { // a key per goroutine
		l := NewLocal()
		var n atomic.Int64
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			key := fmt.Sprintf("logs/client-%d", n.Add(1))
			for pb.Next() {
				l.allow(key, Limit{Rate: 1000, Burst: 2000})
			}
		})
	})
}

// BenchmarkXTimeRate is the baseline: one golang.org/x/time/rate Limiter,
// with no map in front of it, as a Local would have to hold per key.
func BenchmarkXTimeRate(b *testing.B) {
	lim := rate.NewLimiter(1e9, 1)
	b.ReportAllocs()
	for b.Loop() {
		lim.Allow()
	}
}
