package ingress

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/config"
	"github.com/sluice-gw/sluice/job"
	"github.com/sluice-gw/sluice/wire"
)

// policyServer serves cfg's routes (backend b) and keeps what it publishes.
func policyServer(t *testing.T, routes string) (*Server, *fakeStore, func() []*job.Request) {
	t.Helper()
	cfg, err := config.Parse([]byte(routes+"\nbackends: [{ name: b, urls: [\"http://127.0.0.1:1/\"] }]\n"), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []*job.Request
	st := newFakeStore()
	s, err := New(cfg, &fakePublisher{PublishFn: func(_ context.Context, _ string, m broker.Message) error {
		r, err := wire.DecodeRequest(m)
		if err != nil {
			return err
		}
		mu.Lock()
		got = append(got, r)
		mu.Unlock()
		return nil
	}}, st, &fakeBacklog{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return s, st, func() []*job.Request { mu.Lock(); defer mu.Unlock(); return append([]*job.Request(nil), got...) }
}

func header(r *job.Request, name string) (string, bool) {
	for _, kv := range r.Header {
		if strings.EqualFold(kv[0], name) {
			return kv[1], true
		}
	}
	return "", false
}

func TestAckStatus(t *testing.T) {
	t.Parallel()
	s, _, _ := policyServer(t, `routes:
  - { name: ok, path: /ok, backend: b, ack: { status: 200 } }
  - { name: created, path: /created, backend: b, ack: { status: 201 } }
  - { name: plain, path: /plain, backend: b }`)
	for path, want := range map[string]int{"/ok": 200, "/created": 201, "/plain": 202} {
		ctx := call(s, "POST", path, "x", nil)
		if got := ctx.Response.StatusCode(); got != want {
			t.Fatalf("%s: status %d, want %d", path, got, want)
		}
		var body struct{ ID, Status string }
		if err := json.Unmarshal(ctx.Response.Body(), &body); err != nil || body.Status != "queued" || body.ID == "" ||
			len(ctx.Response.Header.Peek("Location")) == 0 || len(ctx.Response.Header.Peek("Retry-After")) == 0 {
			t.Fatalf("%s: body %s, headers %s", path, ctx.Response.Body(), ctx.Response.Header.String())
		}
	}
}

func TestCORS(t *testing.T) {
	t.Parallel()
	s, _, published := policyServer(t, `routes:
  - name: app
    path: /app
    backend: b
    methods: [POST, PUT]
    cors: { origins: ["https://app.example"], headers: [Content-Type, X-Custom], max_age: 90s }
  - name: any
    path: /any
    backend: b
    cors: { origins: ["*"] }
  - { name: none, path: /none, backend: b }`)
	pre := func(path, origin string) *fasthttp.RequestCtx {
		return call(s, "OPTIONS", path, "", map[string]string{"Origin": origin, "Access-Control-Request-Method": "POST",
			"Access-Control-Request-Headers": "content-type"})
	}
	h := func(ctx *fasthttp.RequestCtx, k string) string { return string(ctx.Response.Header.Peek(k)) }

	ctx := pre("/app", "https://app.example")
	if ctx.Response.StatusCode() != 204 || h(ctx, "Access-Control-Allow-Origin") != "https://app.example" ||
		h(ctx, "Access-Control-Allow-Methods") != "POST, PUT" || h(ctx, "Access-Control-Allow-Headers") != "Content-Type, X-Custom" ||
		h(ctx, "Access-Control-Max-Age") != "90" || h(ctx, "Access-Control-Allow-Credentials") != "" {
		t.Fatalf("preflight: %d %s", ctx.Response.StatusCode(), ctx.Response.Header.String())
	}
	if ctx = pre("/app", "https://evil.example"); ctx.Response.StatusCode() != 204 || h(ctx, "Access-Control-Allow-Origin") != "" {
		t.Fatalf("preflight from an origin not listed: %d %s", ctx.Response.StatusCode(), ctx.Response.Header.String())
	}
	if ctx = pre("/any", "https://whoever.example"); h(ctx, "Access-Control-Allow-Origin") != "*" {
		t.Fatalf("preflight on *: %s", ctx.Response.Header.String())
	}
	if ctx = pre("/none", "https://app.example"); ctx.Response.StatusCode() != 405 {
		t.Fatalf("preflight on a route without cors: %d", ctx.Response.StatusCode())
	}
	// Preflights never reach the queue.
	if n := len(published()); n != 0 {
		t.Fatalf("%d preflights published", n)
	}

	ctx = call(s, "POST", "/app", "x", map[string]string{"Origin": "https://app.example"})
	if ctx.Response.StatusCode() != 202 || h(ctx, "Access-Control-Allow-Origin") != "https://app.example" ||
		!strings.Contains(h(ctx, "Access-Control-Expose-Headers"), "Location, X-Request-Id, Retry-After") || h(ctx, "Vary") != "Origin" {
		t.Fatalf("actual answer: %d %s", ctx.Response.StatusCode(), ctx.Response.Header.String())
	}
	id := string(ctx.Response.Header.Peek("X-Request-Id"))
	// Errors carry it too.
	ctx = call(s, "DELETE", "/app", "x", map[string]string{"Origin": "https://app.example"})
	if ctx.Response.StatusCode() != 405 || h(ctx, "Access-Control-Allow-Origin") != "https://app.example" {
		t.Fatalf("error answer: %d %s", ctx.Response.StatusCode(), ctx.Response.Header.String())
	}
	// And polls, for the origins any route lists, with their own preflight.
	ctx = call(s, "GET", "/v1/requests/"+id, "", map[string]string{"Origin": "https://app.example"})
	if ctx.Response.StatusCode() != 200 || h(ctx, "Access-Control-Allow-Origin") != "*" {
		t.Fatalf("poll: %d %s", ctx.Response.StatusCode(), ctx.Response.Header.String())
	}
	ctx = call(s, "OPTIONS", "/v1/requests/"+id, "", map[string]string{"Origin": "https://app.example", "Access-Control-Request-Method": "GET"})
	if ctx.Response.StatusCode() != 204 || h(ctx, "Access-Control-Allow-Methods") != "GET, HEAD" {
		t.Fatalf("poll preflight: %d %s", ctx.Response.StatusCode(), ctx.Response.Header.String())
	}
	// Without cors, no CORS headers at all.
	ctx = call(s, "POST", "/none", "x", map[string]string{"Origin": "https://app.example"})
	if ctx.Response.StatusCode() != 202 || h(ctx, "Access-Control-Allow-Origin") != "" || h(ctx, "Vary") != "" {
		t.Fatalf("route without cors: %s", ctx.Response.Header.String())
	}
	// An origin not listed gets no Access-Control-Allow-Origin, but the request is served.
	ctx = call(s, "POST", "/app", "x", map[string]string{"Origin": "https://evil.example"})
	if ctx.Response.StatusCode() != 202 || h(ctx, "Access-Control-Allow-Origin") != "" {
		t.Fatalf("origin not listed: %s", ctx.Response.Header.String())
	}
}

func TestCORSCredentials(t *testing.T) {
	t.Parallel()
	s, _, _ := policyServer(t, `routes:
  - { name: app, path: /app, backend: b, cors: { origins: ["https://App.example"], credentials: true } }`)
	ctx := call(s, "POST", "/app", "x", map[string]string{"Origin": "https://app.example"})
	if string(ctx.Response.Header.Peek("Access-Control-Allow-Origin")) != "https://app.example" ||
		string(ctx.Response.Header.Peek("Access-Control-Allow-Credentials")) != "true" {
		t.Fatalf("credentials: %s", ctx.Response.Header.String())
	}
}

func TestHeaderTransforms(t *testing.T) {
	t.Parallel()
	s, _, published := policyServer(t, `routes:
  - name: logs
    path: /logs
    backend: b
    set_headers: { X-Tenant: "t-${client}", X-Route: "${route}", X-Id: "${request_id}", X-Price: "$$5", X-Override: fixed }
    remove_headers: [Cookie, x-secret, X_Folded]`)
	ctx := call(s, "POST", "/logs", "x", map[string]string{"Cookie": "a=b", "X-Secret": "s", "X-Override": "client's", "X-Keep": "k",
		"X_Tenant": "evil", "X_secret": "s2", "X-Folded": "f", "X_folded": "f2"})
	if ctx.Response.StatusCode() != 202 {
		t.Fatalf("status %d", ctx.Response.StatusCode())
	}
	r := published()[0]
	want := map[string]string{"X-Tenant": "t-", "X-Route": "logs", "X-Id": r.ID, "X-Price": "$5", "X-Override": "fixed", "X-Keep": "k"}
	for k, v := range want {
		if got, ok := header(r, k); !ok || got != v {
			t.Fatalf("%s = %q (%v), want %q; all %v", k, got, ok, v, r.Header)
		}
	}
	for _, k := range []string{"Cookie", "X-Secret", "X_Tenant", "X_secret", "X-Folded", "X_folded"} {
		if _, ok := header(r, k); ok {
			t.Fatalf("%s reached the queue: %v", k, r.Header)
		}
	}
	n := 0
	for _, kv := range r.Header {
		if strings.EqualFold(kv[0], "X-Override") {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("X-Override %d times: %v", n, r.Header)
	}
}

func gz(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestDecompress(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	schema := dir + "/s.json"
	if err := writeFile(schema, `{"type":"object","required":["msg"]}`); err != nil {
		t.Fatal(err)
	}
	s, _, published := policyServer(t, `routes:
  - { name: in, path: /in, backend: b, decompress: true, max_body: 4KiB, schema: `+schema+` }
  - { name: pass, path: /pass, backend: b }
  - { name: strict, path: /strict, backend: b, schema: `+schema+` }`)
	post := func(path string, body []byte, enc string) *fasthttp.RequestCtx {
		var ctx fasthttp.RequestCtx
		ctx.Request.Header.SetMethod("POST")
		ctx.Request.SetRequestURI(path)
		ctx.Request.SetBody(body)
		if enc != "" {
			ctx.Request.Header.Set("Content-Encoding", enc)
		}
		s.handle(&ctx)
		return &ctx
	}
	doc := []byte(`{"msg":"hello"}`)
	if ctx := post("/in", gz(t, doc), "gzip"); ctx.Response.StatusCode() != 202 {
		t.Fatalf("gzip: %d %s", ctx.Response.StatusCode(), ctx.Response.Body())
	}
	r := published()[0]
	if string(r.Body) != string(doc) {
		t.Fatalf("backend would get %q", r.Body)
	}
	if _, ok := header(r, "Content-Encoding"); ok {
		t.Fatalf("Content-Encoding forwarded with an inflated body: %v", r.Header)
	}
	// The schema checks the inflated JSON.
	if ctx := post("/in", gz(t, []byte(`{"nomsg":1}`)), "gzip"); ctx.Response.StatusCode() != 400 {
		t.Fatalf("schema on inflated body: %d", ctx.Response.StatusCode())
	}
	// A bomb: 64 MiB of zeros in a small body is refused at max_body.
	bomb := gz(t, make([]byte, 64<<20))
	if len(bomb) > 4<<10*20 {
		t.Fatalf("bomb is %d bytes", len(bomb))
	}
	s2, _, _ := policyServer(t, `routes: [{ name: in, path: /in, backend: b, decompress: true, max_body: 1MiB }]`)
	var ctx fasthttp.RequestCtx
	ctx.Request.Header.SetMethod("POST")
	ctx.Request.SetRequestURI("/in")
	ctx.Request.SetBody(bomb)
	ctx.Request.Header.Set("Content-Encoding", "gzip")
	s2.handle(&ctx)
	if ctx.Response.StatusCode() != 413 {
		t.Fatalf("bomb: %d %s", ctx.Response.StatusCode(), ctx.Response.Body())
	}
	if c := post("/in", []byte("not gzip"), "gzip"); c.Response.StatusCode() != 400 {
		t.Fatalf("corrupt gzip: %d", c.Response.StatusCode())
	}
	if c := post("/in", doc, "br"); c.Response.StatusCode() != 415 {
		t.Fatalf("unsupported coding: %d", c.Response.StatusCode())
	}
	if c := post("/in", doc, "identity"); c.Response.StatusCode() != 202 {
		t.Fatalf("identity: %d", c.Response.StatusCode())
	}
	// Two header lines are one list: a second must not hide a bomb.
	var two fasthttp.RequestCtx
	two.Request.Header.SetMethod("POST")
	two.Request.SetRequestURI("/in")
	two.Request.SetBody(gz(t, doc))
	two.Request.Header.Add("Content-Encoding", "identity")
	two.Request.Header.Add("Content-Encoding", "gzip")
	s.handle(&two)
	if two.Response.StatusCode() != 415 {
		t.Fatalf("Content-Encoding: identity + gzip lines: %d %s", two.Response.StatusCode(), two.Response.Body())
	}
	// Without decompress, a compressed body passes untouched with its header.
	z := gz(t, doc)
	if c := post("/pass", z, "gzip"); c.Response.StatusCode() != 202 {
		t.Fatalf("pass: %d", c.Response.StatusCode())
	}
	got := published()
	r = got[len(got)-1]
	if enc, _ := header(r, "Content-Encoding"); !bytes.Equal(r.Body, z) || enc != "gzip" {
		t.Fatalf("passed through: enc %q, body changed %v", enc, !bytes.Equal(r.Body, z))
	}
	// A schema cannot read a compressed body: say so.
	if c := post("/strict", z, "gzip"); c.Response.StatusCode() != 415 || !strings.Contains(string(c.Response.Body()), "decompress: true") {
		t.Fatalf("schema without decompress: %d %s", c.Response.StatusCode(), c.Response.Body())
	}
}

func TestMeter(t *testing.T) {
	t.Parallel()
	s, _, _ := policyServer(t, `routes:
  - { name: logs, path: /logs, backend: b, max_body: 8 }
  - { name: jobs, path: /jobs, backend: b }`)
	call(s, "POST", "/logs", "12345", nil)
	call(s, "POST", "/logs", "123", nil)
	call(s, "POST", "/logs", "123456789", nil) // 413
	call(s, "GET", "/logs", "", nil)           // 405
	call(s, "POST", "/jobs", "j", nil)
	call(s, "POST", "/nowhere", "j", nil) // no route: not metered
	got, _ := json.Marshal(s.Meter().Snapshot())
	want := `[{"client":"","routes":[{"route":"jobs","accepted":1,"bytes":1,"rejected":{}},` +
		`{"route":"logs","accepted":2,"bytes":8,"rejected":{"405":1,"413":1}}]}]`
	if string(got) != want {
		t.Fatalf("meter\n got %s\nwant %s", got, want)
	}
}

func writeFile(path, s string) error { return os.WriteFile(path, []byte(s), 0o644) }

// TestOversizedHeaders: a 16 KiB token gets 431 with a problem, not a
// closed connection.
func TestOversizedHeaders(t *testing.T) {
	t.Parallel()
	s, _, _ := policyServer(t, `routes: [{ name: r, path: /r, backend: b }]`)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	token := strings.Repeat("a", 16<<10)
	if _, err := fmt.Fprintf(c, "POST /r HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: 1\r\n\r\nx", token); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 431 || resp.Header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("got %d %s %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
}

// TestFasthttpLogNoCredentials: fasthttp quotes the raw request after
// "contents:" in its parse errors; the log keeps the error, not that.
func TestFasthttpLogNoCredentials(t *testing.T) {
	var buf bytes.Buffer
	l := fasthttpLogger{zerolog.New(&buf).Level(zerolog.DebugLevel)}
	l.Printf("error when reading request headers: %v", errors.New(`cannot find http request method. contents: "POST / HTTP/1.1\r\nX-Api-Key: SECRETKEY\r\n"`))
	if strings.Contains(buf.String(), "SECRETKEY") || !strings.Contains(buf.String(), "error when reading request headers") {
		t.Fatalf("logged %s", buf.String())
	}
}

// Without auth a rate limit is kept per client address, written as
// net.IP.String writes it (an IPv4-mapped address as IPv4).
func TestRateLimitByAddress(t *testing.T) {
	t.Parallel()
	s, _, _ := policyServer(t, "routes: [{ name: r, path: /r, backend: b, rate_limit: { rate: 0.001, burst: 1 } }]")
	for _, ip := range []net.IP{net.ParseIP("2001:db8::1"), net.ParseIP("::ffff:192.0.2.7"), net.ParseIP("192.0.2.8")} {
		send := func() *fasthttp.RequestCtx {
			var ctx fasthttp.RequestCtx
			ctx.Request.Header.SetMethod("POST")
			ctx.Request.SetRequestURI("/r")
			ctx.SetRemoteAddr(&net.TCPAddr{IP: ip, Port: 40000})
			s.handle(&ctx)
			return &ctx
		}
		if c := send(); c.Response.StatusCode() != 202 {
			t.Fatalf("%s: first request got %d", ip, c.Response.StatusCode())
		}
		c := send()
		if c.Response.StatusCode() != 429 {
			t.Fatalf("%s: second request got %d, want 429", ip, c.Response.StatusCode())
		}
		if want := `\"` + ip.String() + `\"`; !strings.Contains(string(c.Response.Body()), want) {
			t.Errorf("%s: 429 body %s does not name %s", ip, c.Response.Body(), want)
		}
	}
}

// A poll's preflight answers with the routes' cors together: the longest
// max_age, and every route's allowed headers once.
func TestPollCORSUnion(t *testing.T) {
	t.Parallel()
	s, _, _ := policyServer(t, `routes:
  - { name: a, path: /a, backend: b, cors: { origins: ["https://a.example"], headers: [Content-Type, X-A], max_age: 90s } }
  - { name: c, path: /c, backend: b, cors: { origins: ["https://c.example"], headers: [content-type, X-C], max_age: 10m } }
  - { name: d, path: /d, backend: b }`)
	for _, origin := range []string{"https://a.example", "https://c.example"} {
		ctx := call(s, "OPTIONS", pollPrefix+"some-id", "", map[string]string{"Origin": origin, "Access-Control-Request-Method": "GET"})
		h := &ctx.Response.Header
		if ctx.Response.StatusCode() != 204 || string(h.Peek("Access-Control-Allow-Origin")) != origin {
			t.Fatalf("%s: status %d, allow-origin %q", origin, ctx.Response.StatusCode(), h.Peek("Access-Control-Allow-Origin"))
		}
		if got := string(h.Peek("Access-Control-Max-Age")); got != "600" {
			t.Errorf("Max-Age %q, want 600", got)
		}
		if got := string(h.Peek("Access-Control-Allow-Headers")); got != "Content-Type, X-A, X-C" {
			t.Errorf("Allow-Headers %q, want \"Content-Type, X-A, X-C\"", got)
		}
	}
}
