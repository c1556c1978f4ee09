package ingress

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/config"
	"github.com/sluice-gw/sluice/internal/wait"
	"github.com/sluice-gw/sluice/job"
)

func idOf(t *testing.T, body []byte) string {
	t.Helper()
	var a struct{ ID string }
	if err := json.Unmarshal(body, &a); err != nil || a.ID == "" {
		t.Fatalf("no id in %s", body)
	}
	return a.ID
}

// TestIdempotencyWaitsForTheFirst: a second submit with the same key while
// the first is still publishing waits and gets the first id only once it
// is queued — never an id that was not written yet.
func TestIdempotencyWaitsForTheFirst(t *testing.T) {
	t.Parallel()
	var published atomic.Int64
	release := make(chan struct{})
	s, st := testServer(t, "durable", func(ctx context.Context, _ string, _ broker.Message) error {
		<-release
		published.Add(1)
		return nil
	})
	hdr := map[string]string{"Idempotency-Key": "k"}
	first := make(chan *responseOf, 1)
	go func() { first <- respond(call(s, "POST", "/r", "a", hdr)) }()
	wait.For(t, 5*time.Second, "the first submit's claim", func() bool { return st.claimOf("k") != nil })
	second := make(chan *responseOf, 1)
	go func() { second <- respond(call(s, "POST", "/r", "a", hdr)) }()
	wait.For(t, 5*time.Second, "the second submit to find the key claimed", func() bool {
		st.mu.Lock()
		defer st.mu.Unlock()
		return st.claimCalls >= 2
	})
	// While the first is unpublished, the second stays unanswered: watched
	// for a window, since a wait for nothing has no end.
	wait.Never(t, 100*time.Millisecond, "the second submit answered before the first was queued", func() bool {
		return len(second) > 0
	})
	close(release)
	a, b := <-first, <-second
	if a.status != 202 || b.status != 202 || idOf(t, a.body) != idOf(t, b.body) {
		t.Fatalf("first %d %s, second %d %s: want two 202s with one id", a.status, a.body, b.status, b.body)
	}
	if n := published.Load(); n != 1 {
		t.Fatalf("%d publishes, want 1", n)
	}
}

// TestIdempotencyConflictWhileWriting: a first write slower than the wait
// bound gives the second submit 409 with Retry-After.
func TestIdempotencyConflictWhileWriting(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	s, st := testServer(t, "durable", func(ctx context.Context, _ string, _ broker.Message) error {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return ctx.Err()
	})
	s.cfg.PublishTimeout = config.Duration(3 * time.Second)
	s.pub.(*grouper).opts.Timeout = 3 * time.Second // its writes' bound, fixed by New
	hdr := map[string]string{"Idempotency-Key": "k"}
	go call(s, "POST", "/r", "a", hdr)
	wait.For(t, 5*time.Second, "the first submit's claim", func() bool { return st.claimOf("k") != nil })
	start := time.Now()
	ctx := call(s, "POST", "/r", "a", hdr)
	if ctx.Response.StatusCode() != 409 || len(ctx.Response.Header.Peek("Retry-After")) == 0 {
		t.Fatalf("second submit: %d, Retry-After %q; want 409 with Retry-After", ctx.Response.StatusCode(), ctx.Response.Header.Peek("Retry-After"))
	}
	if el := time.Since(start); el < claimWait/2 || el > claimWait+time.Second {
		t.Fatalf("answered after %v, want after about %v", el, claimWait)
	}
}

// TestIdempotencyRetryKeepsTheID: a publish that fails (or times out and
// may have landed) leaves the key bound to its id; the client's retry
// writes that same id, so a write that did land is not duplicated under a
// second id, and the id the retry gets is pollable at once.
func TestIdempotencyRetryKeepsTheID(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var ids []string
	fail := true
	s, _ := testServer(t, "durable", func(_ context.Context, _ string, m broker.Message) error {
		mu.Lock()
		defer mu.Unlock()
		ids = append(ids, m.Key)
		if fail {
			return fmt.Errorf("%w: timed out", broker.ErrUnavailable)
		}
		return nil
	})
	hdr := map[string]string{"Idempotency-Key": "k"}
	if c := call(s, "POST", "/r", "a", hdr); c.Response.StatusCode() != 503 {
		t.Fatalf("first: %d", c.Response.StatusCode())
	}
	mu.Lock()
	fail = false
	mu.Unlock()
	c := call(s, "POST", "/r", "a", hdr)
	if c.Response.StatusCode() != 202 {
		t.Fatalf("retry: %d %s", c.Response.StatusCode(), c.Response.Body())
	}
	id := idOf(t, c.Response.Body())
	if len(ids) != 2 || ids[0] != ids[1] || ids[1] != id {
		t.Fatalf("published ids %v, answered %s: want the same id twice", ids, id)
	}
	if p := call(s, "GET", "/v1/requests/"+id, "", nil); p.Response.StatusCode() != 200 {
		t.Fatalf("poll of the retried id: %d", p.Response.StatusCode())
	}
	// Once queued, the key answers that id without writing anything.
	again := call(s, "POST", "/r", "a", hdr)
	if again.Response.StatusCode() != 202 || idOf(t, again.Response.Body()) != id || len(ids) != 2 {
		t.Fatalf("third submit: %d, %d publishes", again.Response.StatusCode(), len(ids))
	}
}

// TestIdempotencyLandedWriteNotRepeated: when the earlier write of the id
// did land (a worker already recorded it), a retry answers it unwritten.
func TestIdempotencyLandedWriteNotRepeated(t *testing.T) {
	t.Parallel()
	var n atomic.Int64
	s, st := testServer(t, "durable", func(context.Context, string, broker.Message) error {
		if n.Add(1) == 1 {
			return fmt.Errorf("%w: timed out", broker.ErrUnavailable)
		}
		return nil
	})
	hdr := map[string]string{"Idempotency-Key": "k"}
	call(s, "POST", "/r", "a", hdr)
	id := st.claimOf("k").id
	_ = st.Apply(context.Background(), []*job.Event{{ID: id, Route: "r", Backend: "b", Status: job.InFlight, Attempts: 1}})
	c := call(s, "POST", "/r", "a", hdr)
	if c.Response.StatusCode() != 202 || idOf(t, c.Response.Body()) != id || n.Load() != 1 {
		t.Fatalf("retry: %d, %d publishes; want 202 with %s and no second write", c.Response.StatusCode(), n.Load(), id)
	}
}

func TestBadInputGets400(t *testing.T) {
	t.Parallel()
	var n atomic.Int64
	s, _ := testServer(t, "durable", func(context.Context, string, broker.Message) error { n.Add(1); return nil })
	cases := []struct {
		name, uri string
		hdr       map[string]string
	}{
		{"space in a header name", "/r", map[string]string{"Bad Name": "v"}},
		{"colon in a header name", "/r", map[string]string{"X:Y": "v"}},
		{"control character in a value", "/r", map[string]string{"X-A": "a\x01b"}},
		{"dot-dot-semicolon segment", "/p/..;/admin", nil},
		{"dot segment with parameters", "/p/a/.;x/b", nil},
		{"backslash", "/p/a\\b", nil},
		{"encoded backslash", "/p/a%5cb", nil},
		{"encoded slash", "/p/a%2Fb", nil},
		{"encoded NUL", "/p/a%00b", nil},
		{"encoded CRLF", "/p/a%0d%0ab", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := call(s, "POST", c.uri, "x", c.hdr)
			if ctx.Response.StatusCode() != 400 || string(ctx.Response.Header.ContentType()) != "application/problem+json" {
				t.Fatalf("%d %s", ctx.Response.StatusCode(), ctx.Response.Body())
			}
		})
	}
	if n.Load() != 0 {
		t.Fatalf("%d bad requests were queued", n.Load())
	}
	for _, ok := range []string{"/p/a/b.c/..d/x;y", "/p/", "/p/a%20b"} {
		if ctx := call(s, "POST", ok, "x", map[string]string{"X-Ok": "t\tab"}); ctx.Response.StatusCode() != 202 {
			t.Fatalf("%s: %d %s", ok, ctx.Response.StatusCode(), ctx.Response.Body())
		}
	}
}

func TestPublishTooLargeGets413(t *testing.T) {
	t.Parallel()
	s, st := testServer(t, "durable", func(context.Context, string, broker.Message) error {
		return fmt.Errorf("%w: test", broker.ErrTooLarge)
	})
	ctx := call(s, "POST", "/r", "x", nil)
	if ctx.Response.StatusCode() != 413 {
		t.Fatalf("%d %s", ctx.Response.StatusCode(), ctx.Response.Body())
	}
	if len(st.recs) != 0 {
		t.Fatal("a refused request left a record")
	}
}

func TestStoreBehindGets503(t *testing.T) {
	t.Parallel()
	var n atomic.Int64
	s, st := testServer(t, "durable", func(context.Context, string, broker.Message) error { n.Add(1); return nil })
	st.admit = fmt.Errorf("too many unwritten")
	if ctx := call(s, "POST", "/r", "x", nil); ctx.Response.StatusCode() != 503 || len(ctx.Response.Header.Peek("Retry-After")) == 0 {
		t.Fatalf("%d", ctx.Response.StatusCode())
	}
	if n.Load() != 0 {
		t.Fatal("published a request the store could not record")
	}
}

// TestAckFastPermanentErrorRecorded: a request the broker refuses for good
// is recorded as failed once, not retried forever.
func TestAckFastPermanentErrorRecorded(t *testing.T) {
	t.Parallel()
	var n atomic.Int64
	s, st := testServer(t, "fast", func(context.Context, string, broker.Message) error {
		n.Add(1)
		return fmt.Errorf("%w: test", broker.ErrTooLarge)
	})
	ctx := call(s, "POST", "/r", "x", nil)
	if ctx.Response.StatusCode() != 202 {
		t.Fatalf("%d", ctx.Response.StatusCode())
	}
	id := idOf(t, ctx.Response.Body())
	var r *job.Record
	wait.For(t, 5*time.Second, "the record failed", func() bool {
		r, _ = st.Get(context.Background(), id)
		return r != nil && r.Status == job.Failed
	})
	if r.LastError == "" {
		t.Fatal("failed without a reason")
	}
	// Refused for good, it is not written again: watched for a window.
	wait.Never(t, 300*time.Millisecond, "a request refused for good published again", func() bool { return n.Load() != 1 })
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
}

// TestAckFastShutdownDeadline: with the broker away, shutdown waits until
// its deadline, then records what it could not write as failed (and says
// so); a submit after the buffer closed gets 503, never a panic.
func TestAckFastShutdownDeadline(t *testing.T) {
	s, st := testServer(t, "fast", func(ctx context.Context, _ string, _ broker.Message) error {
		return fmt.Errorf("%w: down", broker.ErrUnavailable)
	})
	var ids []string
	for range 5 {
		ids = append(ids, idOf(t, call(s, "POST", "/r", "x", nil).Response.Body()))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := s.Shutdown(ctx); err == nil {
		t.Fatal("shutdown reported nothing lost")
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("shutdown took %v past its deadline", el)
	}
	for _, id := range ids {
		if r, _ := st.Get(context.Background(), id); r == nil || r.Status != job.Failed {
			t.Fatalf("%s: %+v, want failed", id, r)
		}
	}
	if c := call(s, "POST", "/r", "x", nil); c.Response.StatusCode() != 503 {
		t.Fatalf("submit after shutdown: %d", c.Response.StatusCode())
	}
}

func TestLongPollLimit(t *testing.T) {
	t.Parallel()
	s, st := testServer(t, "durable", func(context.Context, string, broker.Message) error { return nil })
	s.cfg.MaxLongPolls = 1
	id := idOf(t, call(s, "POST", "/r", "x", nil).Response.Body())
	_ = st
	go call(s, "GET", "/v1/requests/"+id+"?wait=2s", "", nil)
	wait.For(t, 5*time.Second, "the first long poll", func() bool { return s.polls.Load() >= 1 })
	c := call(s, "GET", "/v1/requests/"+id+"?wait=2s", "", nil)
	if c.Response.StatusCode() != 503 || len(c.Response.Header.Peek("Retry-After")) == 0 {
		t.Fatalf("second long poll: %d", c.Response.StatusCode())
	}
	if c := call(s, "GET", "/v1/requests/"+id, "", nil); c.Response.StatusCode() != 200 {
		t.Fatalf("a poll without wait: %d", c.Response.StatusCode())
	}
}

// TestFreshIDReadAgain: a poll that reaches the store before the accepted
// record (another process's write behind) does not answer 404.
func TestFreshIDReadAgain(t *testing.T) {
	s, st := testServer(t, "durable", func(context.Context, string, broker.Message) error { return nil })
	s.sharedStore = true
	id := idOf(t, call(s, "POST", "/r", "x", nil).Response.Body())
	st.mu.Lock()
	st.getMiss = 5
	st.mu.Unlock()
	if c := call(s, "GET", "/v1/requests/"+id, "", nil); c.Response.StatusCode() != 200 {
		t.Fatalf("fresh id: %d", c.Response.StatusCode())
	}
	start := time.Now()
	st.mu.Lock()
	st.gets = 0
	st.mu.Unlock()
	if c := call(s, "GET", "/v1/requests/"+job.NewID()[:23]+"A", "", nil); c.Response.StatusCode() != 404 || time.Since(start) > 2*time.Second {
		t.Fatalf("unknown id: %d after %v", c.Response.StatusCode(), time.Since(start))
	}
	st.mu.Lock()
	reads := st.gets
	st.mu.Unlock()
	if reads > freshReads+1 {
		t.Fatalf("a forged fresh id cost %d store reads", reads)
	}
	// Past max_long_polls the re-reads stop: 404 at once.
	s.cfg.MaxLongPolls = 0
	start = time.Now()
	if c := call(s, "GET", "/v1/requests/"+job.NewID()[:23]+"A", "", nil); c.Response.StatusCode() != 404 || time.Since(start) > 100*time.Millisecond {
		t.Fatalf("over the long-poll limit: %d after %v", c.Response.StatusCode(), time.Since(start))
	}
	s.cfg.MaxLongPolls = 4096
	// A single-process store holds every record it accepted: 404 at once.
	s.sharedStore = false
	start = time.Now()
	if c := call(s, "GET", "/v1/requests/"+job.NewID()[:23]+"A", "", nil); c.Response.StatusCode() != 404 || time.Since(start) > 100*time.Millisecond {
		t.Fatalf("embedded store: %d after %v", c.Response.StatusCode(), time.Since(start))
	}
	s.sharedStore = true
	old := "AAAAAAAAAAAAAAAAAAAAAAAA" // issued in 1970: 404 at once
	start = time.Now()
	if c := call(s, "GET", "/v1/requests/"+old, "", nil); c.Response.StatusCode() != 404 || time.Since(start) > 100*time.Millisecond {
		t.Fatalf("old unknown id: %d after %v", c.Response.StatusCode(), time.Since(start))
	}
}

func TestConnectionLimit(t *testing.T) {
	t.Parallel()
	t.Run("total", func(t *testing.T) { connectionLimit(t, 2, 0) })
	t.Run("per ip", func(t *testing.T) { connectionLimit(t, 100, 2) })
}

func connectionLimit(t *testing.T, total, perIP int) {
	s, _ := testServer(t, "durable", func(context.Context, string, broker.Message) error { return nil })
	s.cfg.MaxConnections, s.cfg.MaxConnectionsPerIP = total, perIP
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(ln) }()
	defer s.Shutdown(context.Background())
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "GET /v1/requests/x HTTP/1.1\r\nHost: x\r\n\r\n")
		line, _ := bufio.NewReader(c).ReadString('\n')
		if !strings.Contains(line, "404") {
			t.Fatalf("connection within the limit: %q", line)
		}
		held = append(held, c)
	}
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	line, _ := r.ReadString('\n')
	var rest strings.Builder
	for {
		l, err := r.ReadString('\n')
		rest.WriteString(l)
		if err != nil {
			break
		}
	}
	if !strings.Contains(line, "503") || !strings.Contains(rest.String(), "Retry-After: 1") ||
		!strings.Contains(rest.String(), `"status":503`) {
		t.Fatalf("third connection: %q %q", line, rest.String())
	}
	held[0].Close()
	wait.For(t, 5*time.Second, "a freed slot reused (a 404 for an unknown request)", func() bool {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "GET /v1/requests/x HTTP/1.1\r\nHost: x\r\n\r\n")
		line, _ := bufio.NewReader(c).ReadString('\n')
		c.Close()
		return strings.Contains(line, "404")
	})
	held[1].Close()
}

type responseOf struct {
	status int
	body   []byte
}

func respond(c *fasthttp.RequestCtx) *responseOf {
	return &responseOf{c.Response.StatusCode(), append([]byte(nil), c.Response.Body()...)}
}

// TestShutdownClosesSilentConnections: a connection that never sent a
// request (an HTTP client's spare keep-alive connection) does not hold up
// shutdown until its deadline.
func TestShutdownClosesSilentConnections(t *testing.T) {
	s, _ := testServer(t, "durable", func(context.Context, string, broker.Message) error { return nil })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(ln) }()
	silent, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	used, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer used.Close()
	fmt.Fprintf(used, "POST /r HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
	if line, _ := bufio.NewReader(used).ReadString('\n'); !strings.Contains(line, "202") {
		t.Fatalf("submit: %q", line)
	}
	wait.For(t, 5*time.Second, "both connections accepted", func() bool {
		s.lnMu.Lock()
		defer s.lnMu.Unlock()
		return len(s.lns) == 1 && s.lns[0].open() == 2
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v after %v", err, time.Since(start))
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("shutdown took %v", el)
	}
}

// TestAckFastHungBrokerAtShutdown: writes under way when shutdown stops
// new ones run to their timeout, within the deadline; their requests (they
// may have landed) are reported, not recorded as failed.
func TestAckFastHungBrokerAtShutdown(t *testing.T) {
	s, st := testServer(t, "fast", func(ctx context.Context, _ string, _ broker.Message) error {
		<-ctx.Done() // a broker that never answers
		return fmt.Errorf("%w: %v", broker.ErrUnavailable, ctx.Err())
	})
	id := idOf(t, call(s, "POST", "/r", "x", nil).Response.Body())
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := s.Shutdown(ctx)
	if el := time.Since(start); el > 800*time.Millisecond {
		t.Fatalf("shutdown took %v, past its 700 ms deadline", el)
	}
	if err == nil || !strings.Contains(err.Error(), "timed out") {
		t.Fatalf("shutdown: %v, want the timed-out write reported", err)
	}
	if r, _ := st.Get(context.Background(), id); r == nil || r.Status != job.Queued {
		t.Fatalf("record %+v: a write that may have landed was recorded as failed", r)
	}
}

// TestAckFastRefusedDuringShutdown: a request the broker refuses for good
// while the stop is under way is recorded as refused (too large), not as
// lost at shutdown.
func TestAckFastRefusedDuringShutdown(t *testing.T) {
	t.Parallel()
	publishing := make(chan struct{})
	var once sync.Once
	var s *Server
	s, st := testServer(t, "fast", func(context.Context, string, broker.Message) error {
		once.Do(func() { close(publishing) })
		// Answer once the shutdown has stopped new writes: this one is
		// under way, and its answer is what counts.
		wait.For(t, 5*time.Second, "the shutdown to stop new writes", func() bool { return s.fast.abort.Err() != nil })
		return fmt.Errorf("%w: test", broker.ErrTooLarge)
	})
	ctx := call(s, "POST", "/r", "x", nil)
	if ctx.Response.StatusCode() != 202 {
		t.Fatalf("%d", ctx.Response.StatusCode())
	}
	id := idOf(t, ctx.Response.Body())
	<-publishing
	// publish_timeout is 200 ms: new writes stop 200 ms before this ends.
	sctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := s.Shutdown(sctx); err != nil {
		t.Fatalf("shutdown: %v (nothing was lost)", err)
	}
	r, _ := st.Get(context.Background(), id)
	if r == nil || r.Status != job.Failed || !strings.Contains(r.LastError, "too large") {
		t.Fatalf("record %+v, want failed as too large", r)
	}
}
