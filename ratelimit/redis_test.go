package ratelimit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-redis/redis_rate/v10"
	goredis "github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/sluice-gw/sluice/internal/redistest"
)

// testRedis returns a client on the test Redis, checked to answer, and a
// key prefix of tb's own whose keys are deleted when tb ends. Each call
// makes a new client, as each ingress process has its own.
func testRedis(tb testing.TB, prefix string) (goredis.UniversalClient, string) {
	tb.Helper()
	addr := redistest.Addr(tb)
	if prefix == "" {
		prefix = redistest.Prefix(tb, addr)
	}
	rdb := goredis.NewClient(&goredis.Options{Addr: addr, ContextTimeoutEnabled: true, MaxRetries: -1})
	tb.Cleanup(func() { _ = rdb.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		tb.Fatalf("no Redis at %s (make test starts one): %v", addr, err)
	}
	return rdb, prefix
}

// redisLimiter is a Redis limiter on its own client under prefix (a new
// one when ""), with its warnings in logs.
func redisLimiter(tb testing.TB, prefix string, logs *syncBuffer) (*Redis, string) {
	rdb, prefix := testRedis(tb, prefix)
	log := zerolog.Nop()
	if logs != nil {
		log = zerolog.New(logs)
	}
	return NewRedis(rdb, prefix, nil, log), prefix
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestRedisLimit(t *testing.T) {
	for _, tc := range []struct {
		rate   float64
		want   redis_rate.Limit
		approx bool // the interval is rounded to the nanosecond
	}{
		{rate: 100, want: redis_rate.Limit{Rate: 100, Period: time.Second}},
		{rate: 1, want: redis_rate.Limit{Rate: 1, Period: time.Second}},
		{rate: 0.5, want: redis_rate.Limit{Rate: 1, Period: 2 * time.Second}},
		{rate: 2.5, want: redis_rate.Limit{Rate: 5, Period: 2 * time.Second}},
		{rate: 0.1, want: redis_rate.Limit{Rate: 1, Period: 10 * time.Second}},
		{rate: 1.0 / 3, want: redis_rate.Limit{Rate: 1, Period: 3 * time.Second}},
		{rate: 0.001, want: redis_rate.Limit{Rate: 1, Period: 1000 * time.Second}},
		{rate: 1000.25, want: redis_rate.Limit{Rate: 4001, Period: 4 * time.Second}},
		{rate: math.Pi, want: redis_rate.Limit{Rate: 1, Period: 318309886}, approx: true},
		{rate: 1e-4, want: redis_rate.Limit{Rate: 1, Period: 10000 * time.Second}},
	} {
		t.Run(fmt.Sprint(tc.rate), func(t *testing.T) {
			tc.want.Burst = 7
			got := redisLimit(Limit{Rate: tc.rate, Burst: 7})
			if got != tc.want {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			interval := got.Period.Seconds() / float64(got.Rate)
			if err := math.Abs(interval*tc.rate - 1); err > 1e-12 && !tc.approx || err > 1e-8 {
				t.Fatalf("%v is %g per second, not %g", got, 1/interval, tc.rate)
			}
		})
	}
}

// TestRedisSequence checks the Result fields through Redis, whose clock
// runs on while the test does: the times are checked within a margin.
func TestRedisSequence(t *testing.T) {
	r, _ := redisLimiter(t, "", nil)
	ctx := context.Background()
	near := func(got, want time.Duration) bool { return got > want-200*time.Millisecond && got <= want }
	t.Run("burst then refusals", func(t *testing.T) {
		lim := Limit{Rate: 1, Burst: 3}
		for i := range 3 {
			res, err := r.Allow(ctx, "seq", lim)
			if err != nil || !res.Allowed || res.Limit != 3 || res.Remaining != 2-i || res.RetryAfter != 0 ||
				!near(res.Reset, time.Duration(i+1)*time.Second) {
				t.Fatalf("request %d: %+v, %v", i+1, res, err)
			}
		}
		res, err := r.Allow(ctx, "seq", lim)
		if err != nil || res.Allowed || res.Remaining != 0 || !near(res.RetryAfter, time.Second) || !near(res.Reset, 3*time.Second) {
			t.Fatalf("request 4: %+v, %v", res, err)
		}
	})
	t.Run("half a request per second", func(t *testing.T) {
		lim := Limit{Rate: 0.5, Burst: 1}
		if res, err := r.Allow(ctx, "half", lim); err != nil || !res.Allowed || !near(res.Reset, 2*time.Second) {
			t.Fatalf("request 1: %+v, %v", res, err)
		}
		if res, err := r.Allow(ctx, "half", lim); err != nil || res.Allowed || !near(res.RetryAfter, 2*time.Second) {
			t.Fatalf("request 2: %+v, %v", res, err)
		}
	})
	if n := r.fellBack.Load(); n != 0 {
		t.Fatalf("%d calls decided locally, with Redis up", n)
	}
}

// TestRedisShared runs two limiters, each with its own client as two
// ingress processes would have, on one prefix: together they allow the
// rate, not twice it.
func TestRedisShared(t *testing.T) {
	const (
		offered = 150 // requests per second, each
		run     = 5 * time.Second
	)
	lim := Limit{Rate: 100, Burst: 10}
	logs := &syncBuffer{}
	a, prefix := redisLimiter(t, "", logs)
	b, _ := redisLimiter(t, prefix, logs)
	// This measures the shared budget, not Redis's latency on a busy test
	// machine: a call slower than redisTimeout would be decided locally.
	a.timeout, b.timeout = 2*time.Second, 2*time.Second

	var wg sync.WaitGroup
	var allowed, sent [2]int
	start := time.Now()
	for i, r := range []*Redis{a, b} {
		wg.Go(func() {
			every := time.Second / offered
			for n := 0; ; n++ {
				at := start.Add(time.Duration(n) * every)
				if at.Sub(start) >= run {
					return
				}
				time.Sleep(time.Until(at))
				res, err := r.Allow(context.Background(), "logs/team-a", lim)
				if err != nil {
					t.Error(err)
					return
				}
				sent[i]++
				if res.Allowed {
					allowed[i]++
				}
			}
		})
	}
	wg.Wait()

	want := lim.Rate*run.Seconds() + float64(lim.Burst)
	got := float64(allowed[0] + allowed[1])
	off := (got - want) / want * 100
	t.Logf("offered %d+%d in %v, allowed %d+%d = %.0f; want %.0f: %+.2f%% (%d local decisions)",
		sent[0], sent[1], run, allowed[0], allowed[1], got, want, off, a.fellBack.Load()+b.fellBack.Load())
	if n := a.fellBack.Load() + b.fellBack.Load(); n != 0 || logs.String() != "" {
		t.Fatalf("%d calls decided locally, with Redis up: %s", n, logs)
	}
	if math.Abs(off) > 5 {
		t.Fatalf("two limiters together allowed %.0f in %v at rate %g burst %d: %+.1f%% off %.0f",
			got, run, lim.Rate, lim.Burst, off, want)
	}
}

// TestRedisDown points the client where nothing listens: every call is
// decided by the local limiter, without an error, and one warning is
// logged for them all.
func TestRedisDown(t *testing.T) {
	rdb := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1", ContextTimeoutEnabled: true, MaxRetries: -1})
	defer rdb.Close()
	logs := &syncBuffer{}
	local := NewLocal()
	r := NewRedis(rdb, "sluice-test-down:", local, zerolog.New(logs))
	lim := Limit{Rate: 1, Burst: 3}
	for i := range 5 {
		res, err := r.Allow(context.Background(), "logs/team-a", lim)
		if err != nil {
			t.Fatalf("request %d: %v", i+1, err)
		}
		if want := i < 3; res.Allowed != want || res.Limit != 3 {
			t.Fatalf("request %d: %+v; want the local budget (allowed %v)", i+1, res, want)
		}
	}
	if local.len() != 1 {
		t.Fatalf("the fallback Local holds %d keys, want 1", local.len())
	}
	if n := strings.Count(logs.String(), `"level":"warn"`); n != 1 {
		t.Fatalf("%d warnings, want 1: %s", n, logs)
	}
	if !strings.Contains(logs.String(), `"error":`) {
		t.Fatalf("the warning does not say why: %s", logs)
	}
}

// TestRedisWarnsRarely checks that failures are logged at most every
// warnEvery, with the count of local decisions in between.
func TestRedisWarnsRarely(t *testing.T) {
	logs := &syncBuffer{}
	rdb := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1"})
	defer rdb.Close()
	r := NewRedis(rdb, "p:", nil, zerolog.New(logs))
	clk := &clock{}
	r.now = clk.now
	fail := errors.New("i/o timeout")
	for i := range 100 {
		r.fellBack.Add(1)
		r.failed(fail)
		clk.advance(warnEvery / 50) // 100 failures over two warnEvery
		if i == 49 {
			clk.advance(time.Millisecond)
		}
	}
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], `"local_decisions":1,`) ||
		!strings.Contains(lines[1], `"local_decisions":50,`) || !strings.Contains(lines[1], "i/o timeout") {
		t.Fatalf("100 failures over %v: want 2 warnings counting 1 and then 50 local decisions; got\n%s", 2*warnEvery, logs)
	}
}

// TestRedisSlow points the client at a server that accepts and never
// answers: the call is decided locally once the timeout passes, and calls
// after it do not wait while Redis is left alone.
func TestRedisSlow(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns sync.WaitGroup
	stop := make(chan struct{})
	defer func() { close(stop); ln.Close(); conns.Wait() }()
	conns.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Go(func() { <-stop; c.Close() })
		}
	})
	rdb := goredis.NewClient(&goredis.Options{Addr: ln.Addr().String(), ContextTimeoutEnabled: true, MaxRetries: -1,
		DisableIdentity: true, Protocol: 2})
	defer rdb.Close()
	r := NewRedis(rdb, "sluice-test-slow:", nil, zerolog.Nop())
	lim := Limit{Rate: 1, Burst: 2}

	begin := time.Now()
	res, err := r.Allow(context.Background(), "k", lim)
	first := time.Since(begin)
	if err != nil || !res.Allowed {
		t.Fatalf("first: %+v, %v", res, err)
	}
	if first < redisTimeout || first > redisTimeout+time.Second {
		t.Fatalf("first call took %v; the timeout is %v", first, redisTimeout)
	}
	begin = time.Now()
	res, err = r.Allow(context.Background(), "k", lim)
	if again := time.Since(begin); again > redisTimeout/2 {
		t.Fatalf("second call waited %v for a Redis that just failed", again)
	}
	if err != nil || !res.Allowed || res.Remaining != 0 {
		t.Fatalf("second: %+v, %v; want the local budget's last", res, err)
	}
}

// TestRedisRecovers checks that after the retry wait a call tries Redis
// again, and that it is used once it answers.
func TestRedisRecovers(t *testing.T) {
	r, _ := redisLimiter(t, "", nil)
	r.now = (&clock{}).now // stands still at 0
	r.downUntil.Store(int64(redisRetry))
	lim := Limit{Rate: 1, Burst: 1}
	// Both the local limiter and Redis would allow this; only the count
	// of local decisions tells which one did.
	r.Allow(context.Background(), "k", lim)
	if n := r.fellBack.Load(); n != 1 {
		t.Fatalf("%d local decisions while Redis is left alone, want 1", n)
	}
	clk := &clock{}
	clk.advance(redisRetry)
	r.now = clk.now
	if res, _ := r.Allow(context.Background(), "k2", lim); !res.Allowed {
		t.Fatalf("%+v", res)
	}
	if n := r.fellBack.Load(); n != 1 || r.downUntil.Load() != 0 {
		t.Fatalf("after the wait: %d local decisions (want still 1), down until %d (want 0)", n, r.downUntil.Load())
	}
}

func BenchmarkRedisAllow(b *testing.B) {
	r, _ := redisLimiter(b, "", nil)
	lim := Limit{Rate: 1e6, Burst: 1000}
	ctx := context.Background()
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			r.Allow(ctx, "logs/team-a", lim)
		}
	})
	b.Run("parallel", func(b *testing.B) { // 16 callers a CPU, a key each
		var n atomic.Int64
		b.SetParallelism(16)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			key := fmt.Sprintf("logs/client-%d", n.Add(1))
			for pb.Next() {
				r.Allow(ctx, key, lim)
			}
		})
	})
	if n := r.fellBack.Load(); n != 0 {
		b.Fatalf("%d calls decided locally, with Redis up", n)
	}
}
