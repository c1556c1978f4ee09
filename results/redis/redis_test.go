package redis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/sluice-gw/sluice/internal/wait"
	"github.com/sluice-gw/sluice/job"
	"github.com/sluice-gw/sluice/results"
	"github.com/sluice-gw/sluice/results/internal/accept"
	"github.com/sluice-gw/sluice/results/internal/record"
	"github.com/sluice-gw/sluice/results/storetest"
)

// redisAddr is the Redis the tests use: REDIS_ADDR, else 127.0.0.1:6379
// (make test starts one there). Tests that need it skip under -short; it
// is a failure, not a skip, when absent otherwise.
func redisAddr(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("needs Redis; skipped with -short")
	}
	if a := os.Getenv("REDIS_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

var testPrefixes atomic.Int64

// testPrefix returns a key prefix of t's own, whose keys are deleted once
// t's stores are closed.
func testPrefix(t *testing.T) string {
	addr := redisAddr(t)
	prefix := fmt.Sprintf("sluice-test-%d-%d:", time.Now().UnixNano(), testPrefixes.Add(1))
	t.Cleanup(func() { // registered first, so it runs after the stores' Close
		rdb := goredis.NewClient(&goredis.Options{Addr: addr})
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

// open opens a store without running it; t's cleanup closes it.
func open(t *testing.T, opts Options) *Store {
	t.Helper()
	s, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// openRedis opens a store on the test Redis (opts.Addr unless set), runs
// it until t ends, and checks that Redis answers.
func openRedis(t *testing.T, opts Options) *Store {
	t.Helper()
	if opts.Addr == "" {
		opts.Addr = redisAddr(t)
	}
	if opts.TTL == 0 {
		opts.TTL = time.Minute
	}
	s := open(t, opts)
	storetest.Start(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("no Redis at %s (make test starts one): %v", opts.Addr, err)
	}
	return s
}

func TestRedisRecordTTL(t *testing.T) {
	s := openRedis(t, Options{KeyPrefix: testPrefix(t)})
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
	s := openRedis(t, Options{KeyPrefix: testPrefix(t)})
	ctx := context.Background()
	var once sync.Once
	s.queue.AfterMiss = func() { once.Do(func() { _ = s.flush(ctx, false) }) }
	_ = s.Accept(ctx, accepted("x", time.Now()))
	if r, err := s.Get(ctx, "x"); err != nil || r.Status != job.Queued {
		t.Fatalf("poll while its record is being written: %v %v", r, err)
	}
}

// TestRedisStoresUnescaped: a body full of "<" is stored one byte per "<".
func TestRedisStoresUnescaped(t *testing.T) {
	s := openRedis(t, Options{KeyPrefix: testPrefix(t)})
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
	s := openRedis(t, Options{KeyPrefix: testPrefix(t)})
	ctx := context.Background()
	// Two legacy forms: plain JSON, and JSON led by the merge key (what
	// stores wrote before the compact form).
	legacy := func(id string, e *job.Event) {
		r := record.Project(e)
		v, _ := json.Marshal(struct {
			Merge *[3]int `json:"merge,omitempty"`
			*job.Record
			Client string `json:"client,omitempty"`
			Gen    int    `json:"gen,omitempty"`
		}{nil, r, r.Client, r.Gen})
		if strings.HasSuffix(id, "-m") {
			v, _ = json.Marshal(struct {
				Merge *[3]int `json:"merge,omitempty"`
				*job.Record
				Client string `json:"client,omitempty"`
				Gen    int    `json:"gen,omitempty"`
			}{&[3]int{r.Gen, r.Attempts, r.Status.Rank()}, r, r.Client, r.Gen})
		}
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
	for _, st := range slices.Clone(steps) { // each step again on the merge-key form
		m := st
		cp := func(e *job.Event) *job.Event {
			if e == nil {
				return nil
			}
			c := *e
			c.ID += "-m"
			return &c
		}
		m.stored, m.e, m.want = cp(st.stored), cp(st.e), cp(st.want)
		steps = append(steps, m)
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
	s := openRedis(t, Options{KeyPrefix: testPrefix(t)})
	ctx := context.Background()
	if err := s.rdb.Set(ctx, s.idemKey("c", "k"), "old", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	if c, err := s.Claim(ctx, "c", "k", "new", time.Minute); err != nil || c != (results.Claim{ID: "old", State: results.ClaimQueued}) {
		t.Fatalf("legacy binding: %+v %v", c, err)
	}
}

// TestRedisApplyAfterScriptFlush: Apply loads its script again when Redis
// lost it (restart, SCRIPT FLUSH).
func TestRedisApplyAfterScriptFlush(t *testing.T) {
	s := openRedis(t, Options{KeyPrefix: testPrefix(t)})
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

func (p *pipelineSizes) DialHook(next goredis.DialHook) goredis.DialHook          { return next }
func (p *pipelineSizes) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook { return next }
func (p *pipelineSizes) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		p.mu.Lock()
		p.sizes = append(p.sizes, len(cmds))
		p.mu.Unlock()
		return next(ctx, cmds)
	}
}

// TestRedisFlushInChunks: a backlog of accepted records goes out in
// pipelines of at most accept.Chunk, not as one that may outlast its timeout.
func TestRedisFlushInChunks(t *testing.T) {
	s := open(t, Options{Addr: redisAddr(t), KeyPrefix: testPrefix(t), TTL: time.Minute})
	sizes := &pipelineSizes{}
	s.rdb.AddHook(sizes)
	ctx := context.Background()
	const n = 5000
	for i := range n { // all queued when Run starts, as after an outage
		_ = s.Accept(ctx, accepted(fmt.Sprintf("r%d", i), time.Now()))
	}
	storetest.Start(t, s)
	wait.For(t, 20*time.Second, "every accepted record written", func() bool { return s.queue.Len() == 0 })
	sizes.mu.Lock()
	seen := slices.Clone(sizes.sizes)
	sizes.mu.Unlock() // the hook takes it again for a connection Get may dial
	total := 0
	for _, n := range seen {
		if n > accept.Chunk+2 { // MULTI/EXEC-free pipeline: only the SETs
			t.Fatalf("pipeline of %d commands (sizes %v)", n, seen)
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
// polls answer ErrUnavailable, and Run, once stopped, gives up writing
// after StopTimeout instead of hanging.
func TestRedisDown(t *testing.T) {
	s := open(t, Options{Addr: "127.0.0.1:1", TTL: time.Minute, MaxPending: 10,
		StopTimeout: 300 * time.Millisecond})
	stop := storetest.Start(t, s)
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
	if err := s.Admit(); !errors.Is(err, results.ErrUnavailable) {
		t.Fatalf("admit with MaxPending records waiting: %v, want ErrUnavailable", err)
	}
	if err := s.Accept(ctx, accepted("late", time.Now())); err != nil {
		t.Fatalf("accept past MaxPending: %v (it never fails)", err)
	}
	if r, err := s.Get(ctx, "y3"); err == nil || errors.Is(err, results.ErrNotFound) {
		t.Fatalf("poll with Redis down: %v %v, want ErrUnavailable", r, err)
	}
	if err := s.Ping(ctx); err == nil {
		t.Fatal("ping with Redis down succeeded")
	}
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	select {
	case err := <-stopped:
		if !errors.Is(err, results.ErrUnavailable) {
			t.Fatalf("run stopped with unwritten records: %v, want ErrUnavailable", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run hangs at its end while Redis is down")
	}
	first := s.Close()
	if err := s.Close(); err != first {
		t.Fatalf("second Close forgot the first one's result: %v, then %v", first, err)
	}
}

// TestRedisStopFlushes: what was accepted just before Run's end is in
// Redis after Run returned.
func TestRedisStopFlushes(t *testing.T) {
	prefix := testPrefix(t)
	s := open(t, Options{Addr: redisAddr(t), KeyPrefix: prefix, TTL: time.Minute})
	stop := storetest.Start(t, s)
	ctx := context.Background()
	for i := range 3000 {
		_ = s.Accept(ctx, accepted(fmt.Sprintf("c%d", i), time.Now()))
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	other := openRedis(t, Options{KeyPrefix: prefix})
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
	proxy := newFlakyProxy(t, redisAddr(t))
	cut := open(t, Options{Addr: proxy.ln.Addr().String(), KeyPrefix: prefix, TTL: time.Minute})
	storetest.Start(t, cut)
	other := openRedis(t, Options{KeyPrefix: prefix})
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

func accepted(id string, at time.Time) *job.Record {
	return &job.Record{ID: id, Route: "r", Backend: "b", Status: job.Queued, AcceptedAt: at, UpdatedAt: at}
}

func ev(id string, st job.Status, attempts, gen int) *job.Event {
	return &job.Event{ID: id, Route: "r", Backend: "b", Status: st, Attempts: attempts, Gen: gen, At: time.Now()}
}

// TestOptionDefaults: zero options take the documented defaults; negative
// ones are refused.
func TestOptionDefaults(t *testing.T) {
	s := open(t, Options{})
	want := Options{Addr: DefaultAddr, KeyPrefix: DefaultKeyPrefix, TTL: results.DefaultTTL,
		MaxPending: results.DefaultMaxPending, StopTimeout: 5 * time.Second}
	if !reflect.DeepEqual(s.opts, want) {
		t.Errorf("defaults %+v, want %+v", s.opts, want)
	}
	for _, o := range []Options{{TTL: -time.Second}, {MaxPending: -1}, {DB: -1}, {RouteTTL: map[string]time.Duration{"r": 0}}} {
		if s, err := Open(o); err == nil {
			s.Close()
			t.Errorf("Open(%+v) took it", o)
		}
	}
}
