package ingress

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

	"github.com/sluice-gw/sluice/backlog"
	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/config"
	"github.com/sluice-gw/sluice/internal/stacks"
	"github.com/sluice-gw/sluice/internal/wait"
	"github.com/sluice-gw/sluice/job"
	"github.com/sluice-gw/sluice/wire"
)

type fakePublisher struct {
	PublishFn func(ctx context.Context, topic string, msg broker.Message) error
}

func (f *fakePublisher) Publish(ctx context.Context, topic string, msg broker.Message) error {
	return f.PublishFn(ctx, topic, msg)
}

type fakeStore struct {
	mu         sync.Mutex
	recs       map[string]*job.Record
	claims     map[string]*fakeClaim
	events     []*job.Event
	admit      error
	getMiss    int // Get answers not found this many more times
	gets       int
	claimCalls int // calls of Claim
}

type fakeClaim struct {
	id     string
	queued bool
	until  time.Time // owned until
}

func newFakeStore() *fakeStore {
	return &fakeStore{recs: map[string]*job.Record{}, claims: map[string]*fakeClaim{}}
}
func (f *fakeStore) Admit() error { f.mu.Lock(); defer f.mu.Unlock(); return f.admit }
func (f *fakeStore) Accept(_ context.Context, r *job.Record) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.recs[r.ID] == nil {
		f.recs[r.ID] = r
	}
	return nil
}
func (f *fakeStore) Get(_ context.Context, id string) (*job.Record, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gets++
	if f.getMiss > 0 {
		f.getMiss--
		return nil, job.ErrNotFound
	}
	if r := f.recs[id]; r != nil {
		cp := *r
		return &cp, nil
	}
	return nil, job.ErrNotFound
}
func (f *fakeStore) Watch(string) (<-chan struct{}, func()) { return make(chan struct{}), func() {} }
func (f *fakeStore) Apply(_ context.Context, evs []*job.Event) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range evs {
		f.events = append(f.events, e)
		r := f.recs[e.ID]
		if r == nil {
			r = &job.Record{}
			f.recs[e.ID] = r
		}
		r.Apply(e)
	}
	return nil
}
func (f *fakeStore) Claim(_ context.Context, c, k, id string, lease time.Duration) (job.Claim, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.claimCalls++
	cl := f.claims[c+"\x00"+k]
	switch {
	case cl == nil:
		f.claims[c+"\x00"+k] = &fakeClaim{id: id, until: time.Now().Add(lease)}
		return job.Claim{ID: id, State: job.ClaimOwned}, nil
	case cl.queued:
		return job.Claim{ID: cl.id, State: job.ClaimQueued}, nil
	case time.Now().Before(cl.until):
		return job.Claim{ID: cl.id, State: job.ClaimPending}, nil
	}
	cl.until = time.Now().Add(lease)
	return job.Claim{ID: cl.id, State: job.ClaimOwned}, nil
}
func (f *fakeStore) Release(_ context.Context, c, k, id string, queued bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if cl := f.claims[c+"\x00"+k]; cl != nil && cl.id == id {
		cl.queued, cl.until = queued, time.Time{}
	}
	return nil
}
func (f *fakeStore) claimOf(k string) *fakeClaim {
	f.mu.Lock()
	defer f.mu.Unlock()
	if cl := f.claims["\x00"+k]; cl != nil {
		cp := *cl
		return &cp
	}
	return nil
}

// fakeBacklog answers Estimate with a monitor over a scripted Stats.
type fakeBacklog struct{ est backlog.Estimate }

func (f *fakeBacklog) Estimate(string, float64, int) backlog.Estimate { return f.est }
func (f *fakeBacklog) Add(string, int64)                              {}
func (f *fakeBacklog) Packed(string, int)                             {}

var (
	_ broker.Publisher = (*fakePublisher)(nil)
	_ Store            = (*fakeStore)(nil)
	_ Backlog          = (*fakeBacklog)(nil)
)

func testServer(t testing.TB, ack string, pub func(context.Context, string, broker.Message) error) (*Server, *fakeStore) {
	t.Helper()
	cfg, err := config.Parse([]byte(`
ack: `+ack+`
publish_timeout: 200ms
routes:
  - { name: r, path: /r, backend: b, max_body: 64 }
  - { name: p, path: /p/, backend: b, methods: [PUT, POST] }
backends: [{ name: b, urls: ["http://127.0.0.1:1/"], rate: 10 }]
`), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st := newFakeStore()
	s, err := New(cfg, &fakePublisher{PublishFn: pub}, st, &fakeBacklog{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if s.fast != nil {
		s.fast.start() // as Serve does: these tests call the handler directly
	}
	return s, st
}

func call(s *Server, method, uri, body string, hdr map[string]string) *fasthttp.RequestCtx {
	var ctx fasthttp.RequestCtx
	ctx.Request.Header.SetMethod(method)
	ctx.Request.SetRequestURI(uri)
	ctx.Request.SetBodyString(body)
	for k, v := range hdr {
		ctx.Request.Header.Set(k, v)
	}
	s.handle(&ctx)
	return &ctx
}

func TestBrokerDownAnswers503(t *testing.T) {
	t.Parallel()
	for name, err := range map[string]error{
		"refused":   broker.ErrUnavailable,
		"timed out": context.DeadlineExceeded,
	} {
		t.Run(name, func(t *testing.T) {
			s, st := testServer(t, "durable", func(ctx context.Context, _ string, _ broker.Message) error {
				if errors.Is(err, context.DeadlineExceeded) {
					<-ctx.Done()
					return ctx.Err()
				}
				return err
			})
			ctx := call(s, "POST", "/r", "x", map[string]string{"Idempotency-Key": "k1"})
			if ctx.Response.StatusCode() != 503 || len(ctx.Response.Header.Peek("Retry-After")) == 0 {
				t.Fatalf("status %d Retry-After %q", ctx.Response.StatusCode(), ctx.Response.Header.Peek("Retry-After"))
			}
			if string(ctx.Response.Header.ContentType()) != "application/problem+json" {
				t.Fatalf("content type %s", ctx.Response.Header.ContentType())
			}
			if len(st.recs) != 0 {
				t.Fatalf("a refused request left a record")
			}
			// The key keeps its id for a retry, owned by nobody.
			if cl := st.claimOf("k1"); cl == nil || cl.queued || time.Now().Before(cl.until) {
				t.Fatalf("claim after a failed publish: %+v", cl)
			}
		})
	}
}

func TestIDFormat(t *testing.T) {
	t.Parallel()
	s, _ := testServer(t, "durable", func(context.Context, string, broker.Message) error { return nil })
	seen := map[string]bool{}
	for range 1000 {
		ctx := call(s, "POST", "/r", "x", nil)
		var a struct{ ID string }
		_ = json.Unmarshal(ctx.Response.Body(), &a)
		raw, err := base64.RawURLEncoding.DecodeString(a.ID)
		if err != nil || len(raw)*8 < 96 {
			t.Fatalf("id %q: not URL-safe base64 of >= 96 bits (%v)", a.ID, err)
		}
		if seen[a.ID] {
			t.Fatalf("duplicate id %s", a.ID)
		}
		seen[a.ID] = true
		if string(ctx.Response.Header.Peek("Location")) != "/v1/requests/"+a.ID ||
			string(ctx.Response.Header.Peek("X-Request-Id")) != a.ID {
			t.Fatalf("headers: %s", ctx.Response.Header.String())
		}
	}
}

func TestPublishedMessage(t *testing.T) {
	t.Parallel()
	var got broker.Message
	var topic string
	s, _ := testServer(t, "durable", func(_ context.Context, tp string, m broker.Message) error { got, topic = m, tp; return nil })
	ctx := call(s, "PUT", "/p/a/b?x=1", "payload", map[string]string{"X-Api-Key": "secret", "X-Keep": "1", "Connection": "X-Hop", "X-Hop": "h"})
	if ctx.Response.StatusCode() != 202 {
		t.Fatalf("status %d", ctx.Response.StatusCode())
	}
	r, err := wire.DecodeRequest(got)
	if err != nil {
		t.Fatal(err)
	}
	if topic != "requests.b" || r.Method != "PUT" || r.Path != "a/b" || r.Query != "x=1" || string(r.Body) != "payload" || r.Route != "p" {
		t.Fatalf("published %s %+v", topic, r)
	}
	for _, kv := range r.Header {
		if kv[0] == "X-Api-Key" || kv[0] == "X-Hop" || kv[0] == "Connection" {
			t.Fatalf("forwarded %s", kv[0])
		}
	}
}

func TestAckFastBuffersAndFlushes(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var n, failed int
	fail := true
	s, _ := testServer(t, "fast", func(_ context.Context, _ string, m broker.Message) error {
		mu.Lock()
		defer mu.Unlock()
		if fail {
			failed++
			return broker.ErrUnavailable
		}
		reqs, err := wire.Unpack(m) // the writers pack what is buffered
		if err != nil {
			t.Error(err)
		}
		n += len(reqs)
		return nil
	})
	for range 10 {
		if c := call(s, "POST", "/r", "x", nil); c.Response.StatusCode() != 202 {
			t.Fatalf("ack fast: %d", c.Response.StatusCode())
		}
	}
	wait.For(t, 5*time.Second, "a write refused while the broker is away", func() bool { mu.Lock(); defer mu.Unlock(); return failed > 0 })
	mu.Lock()
	fail = false // the broker comes back; buffered requests are not lost
	mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if n != 10 {
		t.Fatalf("%d of 10 buffered requests published", n)
	}
}

func TestRetryAfterEstimate(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		wait time.Duration
		want int
	}{
		{0, 1}, {300 * time.Millisecond, 1}, {1100 * time.Millisecond, 2}, {10 * time.Second, 10}, {1000 * time.Hour, 86400},
	} {
		if got := retryAfter(backlog.Estimate{Wait: c.wait}); got != c.want {
			t.Errorf("wait %v: Retry-After %d, want %d", c.wait, got, c.want)
		}
	}
	// The 202 carries the monitor's estimate.
	s, _ := testServer(t, "durable", func(context.Context, string, broker.Message) error { return nil })
	s.backlog = &fakeBacklog{est: backlog.Estimate{Depth: 40, Wait: 4100 * time.Millisecond}}
	if got := string(call(s, "POST", "/r", "x", nil).Response.Header.Peek("Retry-After")); got != "5" {
		t.Fatalf("Retry-After %q, want 5", got)
	}
}

// TestMaxInflight: past max_inflight pending publishes, submits get 503 at
// once instead of queueing in memory.
func TestMaxInflight(t *testing.T) {
	release := make(chan struct{})
	s, _ := testServer(t, "durable", func(ctx context.Context, _ string, _ broker.Message) error {
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	s.cfg.MaxInflight = 2
	done := make(chan int, 2)
	for range 2 {
		go func() { done <- call(s, "POST", "/r", "x", nil).Response.StatusCode() }()
	}
	wait.For(t, 5*time.Second, "two publishes pending", func() bool { return s.inflight.Load() >= 2 })
	start := time.Now()
	ctx := call(s, "POST", "/r", "x", nil)
	if ctx.Response.StatusCode() != 503 || time.Since(start) > 50*time.Millisecond {
		t.Fatalf("third submit: %d after %v, want an immediate 503", ctx.Response.StatusCode(), time.Since(start))
	}
	close(release)
	for range 2 {
		if st := <-done; st != 202 {
			t.Fatalf("pending submit ended %d", st)
		}
	}
}

// TestNewStartsNothing: the constructor wires; Serve starts the ack: fast
// writers and Shutdown ends them.
func TestNewStartsNothing(t *testing.T) {
	cfg, err := config.Parse([]byte(`
ack: fast
routes: [{ name: r, path: /r, backend: b }]
backends: [{ name: b, urls: ["http://127.0.0.1:1/"] }]
`), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, &fakePublisher{}, newFakeStore(), &fakeBacklog{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if g := stacks.Running("sluice/ingress"); len(g) > 0 {
		t.Fatalf("New started %d goroutines, e.g.\n%s", len(g), g[0])
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	// Serve starts the writers before it answers anything: once it answers,
	// they are there (TestShutdownBeforeServe covers a Shutdown that comes
	// first).
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	wait.For(t, 5*time.Second, "Serve to answer", func() bool {
		resp, err := c.Get("http://" + ln.Addr().String() + "/v1/requests/x")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	})
	// The writers are matched by their function, not by a package-qualified
	// receiver: -race inlines start into Serve, and their frame then reads
	// ingress.(*Server).Serve.(*fastPublisher).start.func1.1.
	wait.For(t, 5*time.Second, "the ack: fast writers to start", func() bool {
		return len(stacks.Matching(func(g string) bool {
			return strings.Contains(g, "sluice/ingress.") && strings.Contains(g, "(*fastPublisher).start.func1.1(")
		})) > 0
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	wait.For(t, 5*time.Second, "every ingress goroutine to end", func() bool { return len(stacks.Running("sluice/ingress")) == 0 })
}

// TestShutdownBeforeServe: a stop that comes before Serve has started
// (a SIGTERM right after the start) still ends Serve, at once.
func TestShutdownBeforeServe(t *testing.T) {
	s, _ := testServer(t, "fast", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	select {
	case err := <-served:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve after Shutdown still serving after 5 s")
	}
}
