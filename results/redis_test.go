package results

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-gw/sluice/job"
)

// redisAddr is the Redis the tests use: REDIS_ADDR, else 127.0.0.1:6379
// (make test starts one there). It is a failure, not a skip, when absent.
func redisAddr() string {
	if a := os.Getenv("REDIS_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

var testPrefixes atomic.Int64

// testPrefix returns a key prefix of t's own, whose keys are deleted once
// t's stores are closed.
func testPrefix(t *testing.T) string {
	prefix := fmt.Sprintf("sluice-test-%d-%d:", time.Now().UnixNano(), testPrefixes.Add(1))
	t.Cleanup(func() { // registered first, so it runs after the stores' Close
		rdb := redis.NewClient(&redis.Options{Addr: redisAddr()})
		defer rdb.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		keys, err := rdb.Keys(ctx, prefix+"*").Result()
		if err == nil && len(keys) > 0 {
			err = rdb.Del(ctx, keys...).Err()
		}
		if err != nil {
			t.Errorf("cleaning up %s*: %v", prefix, err)
		}
	})
	return prefix
}

func openRedis(t *testing.T, opts RedisOptions) *Redis {
	t.Helper()
	if opts.Addr == "" {
		opts.Addr = redisAddr()
	}
	if opts.TTL == 0 {
		opts.TTL = time.Minute
	}
	s := OpenRedis(opts)
	t.Cleanup(func() { _ = s.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("no Redis at %s (make test starts one): %v", redisAddr(), err)
	}
	return s
}

func TestRedisRecordTTL(t *testing.T) {
	s := openRedis(t, RedisOptions{KeyPrefix: testPrefix(t)})
	ctx := context.Background()
	if err := s.Apply(ctx, []*job.Event{ev("x", job.InFlight, 1, 0)}); err != nil {
		t.Fatal(err)
	}
	if ttl := s.rdb.PTTL(ctx, s.recKey("x")).Val(); ttl <= 0 || ttl > time.Minute {
		t.Fatalf("record TTL %v, want within the store ttl", ttl)
	}
}

// TestRedisGetWhileFlushing writes the accepted record and drops it from
// memory between Get's look in Redis and its look in memory — the window
// that made an immediate poll 404 about once in 150.
func TestRedisGetWhileFlushing(t *testing.T) {
	s := openRedis(t, RedisOptions{KeyPrefix: testPrefix(t)})
	ctx := context.Background()
	var once sync.Once
	s.queue.afterMiss = func() { once.Do(func() { _ = s.flush(ctx, false) }) }
	_ = s.Accept(ctx, accepted("x", time.Now()))
	if r, err := s.Get(ctx, "x"); err != nil || r.Status != job.Queued {
		t.Fatalf("poll while its record is being written: %v %v", r, err)
	}
}

// TestRedisStoresUnescaped: a body full of "<" is stored one byte per "<".
func TestRedisStoresUnescaped(t *testing.T) {
	s := openRedis(t, RedisOptions{KeyPrefix: testPrefix(t)})
	ctx := context.Background()
	e := ev("x", job.Succeeded, 1, 0)
	body := strings.Repeat("<>&", 10000)
	e.Response = &job.Response{Status: 200, Headers: map[string]string{}, Body: body, BodyEncoding: "utf8"}
	_ = s.Accept(ctx, accepted("y", time.Now()))
	a := accepted("y", time.Now())
	a.LastError = body
	_ = s.Accept(ctx, a)
	if err := s.Apply(ctx, []*job.Event{e}); err != nil {
		t.Fatal(err)
	}
	if err := s.flush(ctx, true); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"x", "y"} {
		raw, err := s.rdb.Get(ctx, s.recKey(id)).Bytes()
		if err != nil {
			t.Fatal(err)
		}
		if len(raw) > len(body)+1000 || strings.Contains(string(raw), `\u003c`) {
			t.Fatalf("record %s stored in %d bytes for a %d-byte body (HTML-escaped)", id, len(raw), len(body))
		}
	}
}

// TestRedisReadsLegacyRecords: records written before merge keys existed
// (plain json.Marshal) are still read, and merged by the same rule.
func TestRedisReadsLegacyRecords(t *testing.T) {
	s := openRedis(t, RedisOptions{KeyPrefix: testPrefix(t)})
	ctx := context.Background()
	legacy := func(id string, e *job.Event) {
		r := project(e)
		v, _ := json.Marshal(struct {
			*job.Record
			Client string `json:"client,omitempty"`
			Gen    int    `json:"gen,omitempty"`
		}{r, r.Client, r.Gen})
		if err := s.rdb.Set(ctx, s.recKey(id), v, time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
	}
	steps := []struct {
		name   string
		stored *job.Event
		e      *job.Event
		want   *job.Event
	}{
		{"stale in_flight after success", ev("a", job.Succeeded, 2, 0), ev("a", job.InFlight, 1, 0), nil},
		{"later attempt after success", ev("b", job.Succeeded, 2, 0), ev("b", job.Failed, 3, 0), nil},
		{"replay after success", ev("c", job.Succeeded, 2, 0), ev("c", job.Queued, 0, 1), ev("c", job.Queued, 0, 1)},
		{"retrying after in_flight", ev("d", job.InFlight, 1, 0), ev("d", job.Retrying, 1, 0), ev("d", job.Retrying, 1, 0)},
		{"older generation", ev("e", job.InFlight, 1, 2), ev("e", job.Succeeded, 3, 1), nil},
	}
	for _, st := range steps {
		legacy(st.stored.ID, st.stored)
		if r, err := s.Get(ctx, st.stored.ID); err != nil || r.Status != st.stored.Status || r.Gen != st.stored.Gen {
			t.Fatalf("%s: legacy record read as %+v %v", st.name, r, err)
		}
		if err := s.Apply(ctx, []*job.Event{st.e}); err != nil {
			t.Fatal(err)
		}
		want := st.want
		if want == nil {
			want = st.stored
		}
		r, err := s.Get(ctx, st.stored.ID)
		if err != nil || r.Status != want.Status || r.Attempts != want.Attempts || r.Gen != want.Gen {
			t.Fatalf("%s: got %+v %v, want %s@%d gen %d", st.name, r, err, want.Status, want.Attempts, want.Gen)
		}
	}
}

// TestRedisLegacyClaim reads a binding written before claims had states (a
// bare id, SET NX): it bound a queued request.
func TestRedisLegacyClaim(t *testing.T) {
	s := openRedis(t, RedisOptions{KeyPrefix: testPrefix(t)})
	ctx := context.Background()
	if err := s.rdb.Set(ctx, s.idemKey("c", "k"), "old", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	if c, err := s.Claim(ctx, "c", "k", "new", time.Minute); err != nil || c != (Claim{ID: "old", State: ClaimQueued}) {
		t.Fatalf("legacy binding: %+v %v", c, err)
	}
}

// TestRedisApplyAfterScriptFlush: Apply loads its script again when Redis
// lost it (restart, SCRIPT FLUSH).
func TestRedisApplyAfterScriptFlush(t *testing.T) {
	s := openRedis(t, RedisOptions{KeyPrefix: testPrefix(t)})
	ctx := context.Background()
	if err := s.rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	ch, stop := s.Watch("x")
	defer stop()
	if err := s.Apply(ctx, []*job.Event{ev("x", job.InFlight, 1, 0)}); err != nil {
		t.Fatalf("apply after SCRIPT FLUSH: %v", err)
	}
	if r, err := s.Get(ctx, "x"); err != nil || r.Status != job.InFlight {
		t.Fatalf("after apply: %+v %v", r, err)
	}
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("change not announced")
	}
}

// pipelineSizes records how many commands each pipeline carried.
type pipelineSizes struct {
	mu    sync.Mutex
	sizes []int
}

func (p *pipelineSizes) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (p *pipelineSizes) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (p *pipelineSizes) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		p.mu.Lock()
		p.sizes = append(p.sizes, len(cmds))
		p.mu.Unlock()
		return next(ctx, cmds)
	}
}

// TestRedisFlushInChunks: a backlog of accepted records goes out in
// pipelines of at most flushChunk, not as one that may outlast its timeout.
func TestRedisFlushInChunks(t *testing.T) {
	s := openRedis(t, RedisOptions{KeyPrefix: testPrefix(t)})
	sizes := &pipelineSizes{}
	s.rdb.AddHook(sizes)
	ctx := context.Background()
	const n = 5000
	s.queue.mu.Lock() // all at once, as after an outage
	for i := range n {
		r := accepted(fmt.Sprintf("r%d", i), time.Now())
		s.queue.m[r.ID] = r
	}
	s.queue.n.Store(int64(len(s.queue.m)))
	s.queue.mu.Unlock()
	deadline := time.Now().Add(20 * time.Second)
	for s.queue.len() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d accepted records still unwritten", s.queue.len())
		}
		time.Sleep(5 * time.Millisecond)
	}
	sizes.mu.Lock()
	defer sizes.mu.Unlock()
	total := 0
	for _, n := range sizes.sizes {
		if n > flushChunk+2 { // MULTI/EXEC-free pipeline: only the SETs
			t.Fatalf("pipeline of %d commands (sizes %v)", n, sizes.sizes)
		}
		total += n
	}
	if total < n {
		t.Fatalf("%d commands for %d records", total, n)
	}
	if r, err := s.Get(ctx, "r4999"); err != nil || r.Status != job.Queued {
		t.Fatalf("flushed record: %+v %v", r, err)
	}
}

// TestRedisDown: while Redis is away submits never wait, Admit refuses
// past MaxPending (Accept still takes the records of admitted requests),
// polls answer ErrUnavailable, and Close gives up writing after
// CloseTimeout instead of hanging.
func TestRedisDown(t *testing.T) {
	s := OpenRedis(RedisOptions{Addr: "127.0.0.1:1", TTL: time.Minute, MaxPending: 10,
		CloseTimeout: 300 * time.Millisecond})
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i := range 10 {
		if err := s.Admit(); err != nil {
			t.Fatalf("admit %d of MaxPending 10: %v", i, err)
		}
		start := time.Now()
		if err := s.Accept(ctx, accepted(fmt.Sprintf("y%d", i), time.Now())); err != nil || time.Since(start) > 10*time.Millisecond {
			t.Fatalf("accept with Redis down: %v after %v (submits must not wait on Redis)", err, time.Since(start))
		}
	}
	if err := s.Admit(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("admit with MaxPending records waiting: %v, want ErrUnavailable", err)
	}
	if err := s.Accept(ctx, accepted("late", time.Now())); err != nil {
		t.Fatalf("accept past MaxPending: %v (it never fails)", err)
	}
	if r, err := s.Get(ctx, "y3"); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("poll with Redis down: %v %v, want ErrUnavailable", r, err)
	}
	if err := s.Ping(ctx); err == nil {
		t.Fatal("ping with Redis down succeeded")
	}
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	select {
	case err := <-closed:
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("close with unwritten records: %v, want ErrUnavailable", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close hangs while Redis is down")
	}
	if err := s.Close(); err == nil {
		t.Fatal("second Close forgot the first one's result")
	}
}

// TestRedisCloseFlushes: what was accepted just before Close is in Redis
// after it.
func TestRedisCloseFlushes(t *testing.T) {
	prefix := testPrefix(t)
	s := openRedis(t, RedisOptions{KeyPrefix: prefix})
	ctx := context.Background()
	for i := range 3000 {
		_ = s.Accept(ctx, accepted(fmt.Sprintf("c%d", i), time.Now()))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	other := openRedis(t, RedisOptions{KeyPrefix: prefix})
	for i := range 3000 {
		if _, err := other.read(ctx, fmt.Sprintf("c%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	n, err := other.rdb.Keys(ctx, prefix+"r:*").Result()
	if err != nil || len(n) != 3000 {
		t.Fatalf("%d records in Redis after Close, want 3000 (%v)", len(n), err)
	}
}

// flakyProxy forwards TCP to Redis and can drop every connection and
// refuse new ones for a while, as a Redis restart or a network cut would.
type flakyProxy struct {
	ln    net.Listener
	mu    sync.Mutex
	down  bool
	conns []net.Conn
	wg    sync.WaitGroup
}

func newFlakyProxy(t *testing.T, target string) *flakyProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &flakyProxy{ln: ln}
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.down {
				p.mu.Unlock()
				c.Close()
				continue
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				p.mu.Unlock()
				c.Close()
				continue
			}
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			p.wg.Go(func() { _, _ = io.Copy(up, c); up.Close() })
			p.wg.Go(func() { _, _ = io.Copy(c, up); c.Close() })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		p.cut(true)
		p.wg.Wait()
	})
	return p
}

// cut drops every connection; down says whether new ones are refused.
func (p *flakyProxy) cut(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// TestRedisWatchSurvivesOutage: an announcement made while a process's
// subscription was cut is lost; when the subscription comes back the
// process wakes its pollers, so they read the change instead of waiting
// out their ?wait.
func TestRedisWatchSurvivesOutage(t *testing.T) {
	prefix := testPrefix(t)
	proxy := newFlakyProxy(t, redisAddr())
	cut := OpenRedis(RedisOptions{Addr: proxy.ln.Addr().String(), KeyPrefix: prefix, TTL: time.Minute})
	t.Cleanup(func() { _ = cut.Close() })
	other := openRedis(t, RedisOptions{KeyPrefix: prefix})
	ctx := context.Background()
	// The subscription is up once an announcement gets through.
	deadline := time.Now().Add(10 * time.Second)
	for n := 1; ; n++ {
		ch, stop := cut.Watch("x")
		if err := other.Apply(ctx, []*job.Event{ev("x", job.InFlight, n, 0)}); err != nil {
			t.Fatal(err)
		}
		select {
		case <-ch:
		case <-time.After(100 * time.Millisecond):
		}
		stop()
		if r, err := cut.Get(ctx, "x"); err == nil && r.Attempts == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("store behind the proxy never reached Redis")
		}
	}
	ch, stop := cut.Watch("y")
	defer stop()
	proxy.cut(true)
	if err := other.Apply(ctx, []*job.Event{ev("y", job.Succeeded, 1, 0)}); err != nil {
		t.Fatal(err)
	}
	proxy.cut(false)
	select {
	case <-ch:
	case <-time.After(15 * time.Second):
		t.Fatal("poller not woken after the subscription came back")
	}
	if r, err := cut.Get(ctx, "y"); err != nil || r.Status != job.Succeeded {
		t.Fatalf("after the outage: %+v %v", r, err)
	}
}
