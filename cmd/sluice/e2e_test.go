package main

import (
	"encoding/json"
	"fmt"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/internal/wait"
)

func TestSubmitDeliverPoll(t *testing.T) {
	integration(t)
	t.Parallel()
	be := newBackend(t, func(h hit, n int) (int, map[string]string, string) {
		return 201, map[string]string{"Content-Type": "application/json", "X-Backend": "yes"}, `{"stored":"` + h.Path + `"}`
	})
	g := startGateway(t, `
routes:
  - { name: logs, path: /v1/logs, backend: store, methods: [POST, PUT] }
  - { name: events, path: /v1/events/, backend: store }
backends:
`+backendCfg("store", be.URL+"/ingest", ""))

	a := g.submit("/v1/logs?src=app&x=1", `{"msg":"hello"}`, map[string]string{
		"Content-Type": "application/json", "Authorization": "Bearer secret", "X-Api-Key": "k",
		"Traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "X-Custom": "v",
	})
	if len(a.ID) < 16 || a.Status != "queued" || a.StatusURL != "/v1/requests/"+a.ID {
		t.Fatalf("202 body: %+v", a)
	}
	r := g.await(a.ID, 20*time.Second)
	if r.Status != "succeeded" || r.Attempts != 1 || r.Route != "logs" || r.Backend != "store" || r.DeadLettered {
		t.Fatalf("record: %+v", r)
	}
	if r.Response == nil || r.Response.Status != 201 || r.Response.Body != `{"stored":"/ingest"}` ||
		r.Response.Headers["X-Backend"] != "yes" || r.Response.BodyEncoding != "utf8" {
		t.Fatalf("response: %+v", r.Response)
	}
	for _, ts := range []string{r.AcceptedAt, r.UpdatedAt, r.CompletedAt} {
		if _, err := time.Parse(time.RFC3339Nano, ts); err != nil {
			t.Fatalf("timestamp %q: %v", ts, err)
		}
	}
	hits := be.hitsFor(a.ID)
	if len(hits) != 1 {
		t.Fatalf("backend got %d hits, want 1", len(hits))
	}
	h := hits[0]
	if h.Method != "POST" || h.Path != "/ingest" || h.Query != "src=app&x=1" || h.Body != `{"msg":"hello"}` {
		t.Fatalf("backend request: %+v", h)
	}
	checks := map[string]string{
		"Authorization": "", "X-Api-Key": "", "X-Custom": "v", "Content-Type": "application/json",
		"X-Request-Id": a.ID, "X-Sluice-Attempt": "1",
		"Traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
	}
	for k, want := range checks {
		if got := h.Header.Get(k); got != want {
			t.Errorf("backend header %s = %q, want %q", k, got, want)
		}
	}

	// The terminal response replays as is.
	resp, body := do(t, "GET", g.base+"/v1/requests/"+a.ID+"/response", "", nil)
	if resp.StatusCode != 201 || string(body) != `{"stored":"/ingest"}` || resp.Header.Get("X-Backend") != "yes" ||
		resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("replayed response: %d %v %s", resp.StatusCode, resp.Header, body)
	}

	// A prefix route appends the rest of the path.
	b := g.submit("/v1/events/user/42?q=1", `x`, nil)
	g.await(b.ID, 20*time.Second)
	if h := be.hitsFor(b.ID); len(h) != 1 || h[0].Path != "/ingest/user/42" || h[0].Query != "q=1" {
		t.Fatalf("prefix route hit: %+v", h)
	}
}

func TestPollHeadersAndLongPoll(t *testing.T) {
	integration(t)
	release := make(chan struct{})
	be := newBackend(t, func(h hit, n int) (int, map[string]string, string) {
		<-release
		return 200, nil, "ok"
	})
	g := startGateway(t, `
routes: [{ name: r, path: /r, backend: b }]
backends:
`+backendCfg("b", be.URL, ""))
	a := g.submit("/r", "x", nil)
	resp, body := do(t, "GET", g.base+"/v1/requests/"+a.ID, "", nil)
	if resp.StatusCode != 200 || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("pending poll: %d Retry-After=%q %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	resp, _ = do(t, "GET", g.base+"/v1/requests/"+a.ID+"/response", "", nil)
	if resp.StatusCode != 409 {
		t.Fatalf("/response while pending: %d, want 409", resp.StatusCode)
	}
	// A long poll returns as soon as the outcome lands, not at its deadline:
	// the backend answers 300 ms after the long poll went out.
	var once sync.Once
	start := time.Now()
	resp, body = doTraced(t, "GET", g.base+"/v1/requests/"+a.ID+"?wait=20s", &httptrace.ClientTrace{
		WroteRequest: func(httptrace.WroteRequestInfo) {
			once.Do(func() { time.AfterFunc(300*time.Millisecond, func() { close(release) }) })
		},
	})
	var r record
	_ = json.Unmarshal(body, &r)
	if r.Status != "succeeded" || time.Since(start) > 5*time.Second {
		t.Fatalf("long poll: %s after %v", r.Status, time.Since(start))
	}
	if resp.Header.Get("Retry-After") != "" {
		t.Fatalf("terminal poll carries Retry-After")
	}
	// A long poll on a request that stays pending returns after its wait.
	// A backend slower than the wait: it answers when the test ends (sooner
	// than a fixed delay would, so the gateway's stop does not wait for it).
	slow := make(chan struct{})
	t.Cleanup(func() { close(slow) }) // runs before the gateway stops
	be.setRespond(func(h hit, n int) (int, map[string]string, string) {
		select {
		case <-slow:
		case <-time.After(30 * time.Second):
		}
		return 200, nil, ""
	})
	b := g.submit("/r", "y", nil)
	start = time.Now()
	_, body = do(t, "GET", g.base+"/v1/requests/"+b.ID+"?wait=1s", "", nil)
	_ = json.Unmarshal(body, &r)
	if el := time.Since(start); el < 900*time.Millisecond || el > 2500*time.Millisecond || r.Status == "succeeded" {
		t.Fatalf("wait=1s returned %s after %v", r.Status, el)
	}
}

func TestRetriesThenSuccess(t *testing.T) {
	integration(t)
	t.Parallel()
	be := newBackend(t, func(h hit, n int) (int, map[string]string, string) {
		if n < 3 {
			return 503, nil, "busy"
		}
		return 200, nil, "done"
	})
	g := startGateway(t, `
routes: [{ name: r, path: /r, backend: b }]
backends:
`+backendCfg("b", be.URL, "    retry: { max_attempts: 5, initial_backoff: 50ms, max_backoff: 200ms }\n"))
	a := g.submit("/r", "x", nil)
	r := g.await(a.ID, 20*time.Second)
	if r.Status != "succeeded" || r.Attempts != 3 || r.Response.Body != "done" {
		t.Fatalf("record: %+v", r)
	}
	hits := be.hitsFor(a.ID)
	if len(hits) != 3 {
		t.Fatalf("%d hits, want 3", len(hits))
	}
	for i, h := range hits {
		if got := h.Header.Get("X-Sluice-Attempt"); got != fmt.Sprint(i+1) {
			t.Errorf("hit %d: X-Sluice-Attempt %s", i, got)
		}
		if i > 0 && h.At.Sub(hits[i-1].At) < 45*time.Millisecond {
			t.Errorf("retry %d came %v after the previous attempt, before the backoff", i, h.At.Sub(hits[i-1].At))
		}
	}
}

func TestNonRetryableFailure(t *testing.T) {
	integration(t)
	t.Parallel()
	be := newBackend(t, func(h hit, n int) (int, map[string]string, string) { return 422, nil, "bad record" })
	g := startGateway(t, `
routes: [{ name: r, path: /r, backend: b }]
backends:
`+backendCfg("b", be.URL, ""))
	a := g.submit("/r", "x", nil)
	r := g.await(a.ID, 20*time.Second)
	if r.Status != "failed" || r.Attempts != 1 || r.DeadLettered || r.Response == nil || r.Response.Status != 422 ||
		r.Response.Body != "bad record" || r.LastError != "422 Unprocessable Entity" {
		t.Fatalf("record: %+v", r)
	}
	// Terminal, it is not tried again: watched for a window.
	wait.Never(t, 200*time.Millisecond, "the non-retryable request tried again", func() bool { return len(be.hitsFor(a.ID)) != 1 })
}

func TestDeadLetterAndReplay(t *testing.T) {
	integration(t)
	t.Parallel()
	be := newBackend(t, func(h hit, n int) (int, map[string]string, string) { return 500, nil, "down" })
	g := startGateway(t, `
routes: [{ name: r, path: /r, backend: b }]
backends:
`+backendCfg("b", be.URL, "    retry: { max_attempts: 2, initial_backoff: 20ms, max_backoff: 50ms }\n"))
	a := g.submit("/r", "x", nil)
	other := g.submit("/r", "y", nil)
	r := g.await(a.ID, 20*time.Second)
	if r.Status != "failed" || !r.DeadLettered || r.Attempts != 2 || r.LastError != "500 Internal Server Error" {
		t.Fatalf("record: %+v", r)
	}
	g.await(other.ID, 20*time.Second)

	resp, body := do(t, "GET", g.admin+"/admin/dead-letters?backend=b&limit=10", "", nil)
	var dl struct {
		Items []struct {
			ID             string `json:"id"`
			Backend        string `json:"backend"`
			LastError      string `json:"last_error"`
			Attempts       int    `json:"attempts"`
			DeadLetteredAt string `json:"dead_lettered_at"`
		}
	}
	if err := json.Unmarshal(body, &dl); err != nil || resp.StatusCode != 200 || len(dl.Items) != 2 {
		t.Fatalf("dead letters: %d %s", resp.StatusCode, body)
	}
	if it := dl.Items[0]; it.Backend != "b" || it.Attempts != 2 || it.LastError == "" || it.DeadLetteredAt == "" {
		t.Fatalf("dead letter item: %+v", it)
	}

	be.setRespond(func(h hit, n int) (int, map[string]string, string) { return 200, nil, "ok now" })
	resp, body = do(t, "POST", g.admin+"/admin/dead-letters/replay", `{"backend":"b","ids":["`+a.ID+`"]}`, nil)
	if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != `{"replayed":1}` {
		t.Fatalf("replay: %d %s", resp.StatusCode, body)
	}
	r = g.await(a.ID, 20*time.Second)
	if r.Status != "succeeded" || r.Attempts != 1 || r.DeadLettered || r.ID != a.ID {
		t.Fatalf("after replay: %+v", r)
	}
	hits := be.hitsFor(a.ID)
	if last := hits[len(hits)-1]; last.Header.Get("X-Sluice-Attempt") != "1" {
		t.Fatalf("replayed delivery attempt header %q, want fresh attempts", last.Header.Get("X-Sluice-Attempt"))
	}
	// The other one is still dead; replay with no ids takes the rest.
	_, body = do(t, "GET", g.admin+"/admin/dead-letters?backend=b", "", nil)
	if !strings.Contains(string(body), other.ID) || strings.Contains(string(body), a.ID) {
		t.Fatalf("dead letters after replay: %s", body)
	}
	_, body = do(t, "POST", g.admin+"/admin/dead-letters/replay", `{"backend":"b"}`, nil)
	if strings.TrimSpace(string(body)) != `{"replayed":1}` {
		t.Fatalf("replay all: %s", body)
	}
	if r := g.await(other.ID, 20*time.Second); r.Status != "succeeded" {
		t.Fatalf("other after replay: %+v", r)
	}
	resp, _ = do(t, "POST", g.admin+"/admin/dead-letters/replay", `{"backend":"nope"}`, nil)
	if resp.StatusCode != 404 {
		t.Fatalf("replay unknown backend: %d", resp.StatusCode)
	}
}

// Test429RetryAfterSpacing: a backend's Retry-After is honoured up to
// max_backoff, and no further: 999999999 seconds would park a request for
// decades (and overflowed the wait).
func Test429RetryAfterSpacing(t *testing.T) {
	integration(t)
	for _, c := range []struct {
		retryAfter, maxBackoff string
		min, max               time.Duration
	}{
		{"2", "5s", 1900 * time.Millisecond, 4 * time.Second},
		{"999999999", "300ms", 0, 2 * time.Second},
	} {
		t.Run("Retry-After "+c.retryAfter, func(t *testing.T) {
			be := newBackend(t, func(h hit, n int) (int, map[string]string, string) {
				if n == 1 {
					return 429, map[string]string{"Retry-After": c.retryAfter}, "slow down"
				}
				return 200, nil, "ok"
			})
			g := startGateway(t, `
routes: [{ name: r, path: /r, backend: b }]
backends:
`+backendCfg("b", be.URL, "    retry: { initial_backoff: 10ms, max_backoff: "+c.maxBackoff+" }\n"))
			a := g.submit("/r", "x", nil)
			if r := g.await(a.ID, 20*time.Second); r.Status != "succeeded" || r.Attempts != 2 {
				t.Fatalf("record: %+v", r)
			}
			hits := be.hitsFor(a.ID)
			if gap := hits[1].At.Sub(hits[0].At); gap < c.min || gap > c.max {
				t.Fatalf("retry came %v after a 429 with Retry-After: %s (max_backoff %s), want %v..%v",
					gap, c.retryAfter, c.maxBackoff, c.min, c.max)
			}
		})
	}
}

// TestHangingBackendIsolation: a backend that hangs holds its own pool, not
// the healthy backend's deliveries.
func TestHangingBackendIsolation(t *testing.T) {
	integration(t)
	hang := make(chan struct{})
	defer close(hang)
	slow := newBackend(t, func(h hit, n int) (int, map[string]string, string) {
		<-hang
		return 200, nil, ""
	})
	fast := newBackend(t, nil)
	g := startGateway(t, `
shutdown_timeout: 2s
routes:
  - { name: slow, path: /slow, backend: slow }
  - { name: fast, path: /fast, backend: fast }
backends:
`+backendCfg("slow", slow.URL, "    concurrency: 4\n    timeout: 30s\n")+
		backendCfg("fast", fast.URL, "    concurrency: 4\n"))
	for range 20 {
		g.submit("/slow", "x", nil)
	}
	var ids []string
	for range 20 {
		ids = append(ids, g.submit("/fast", "x", nil).ID)
	}
	start := time.Now()
	for _, id := range ids {
		if r := g.await(id, 10*time.Second); r.Status != "succeeded" {
			t.Fatalf("fast backend request %s: %+v", id, r)
		}
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("fast backend took %v next to a hanging one", el)
	}
	if n := slow.count(); n != 4 {
		t.Fatalf("hanging backend got %d requests, want its concurrency 4", n)
	}
}

func TestIdempotencyKey(t *testing.T) {
	integration(t)
	t.Parallel()
	be := newBackend(t, nil)
	g := startGateway(t, `
routes: [{ name: r, path: /r, backend: b }]
backends:
`+backendCfg("b", be.URL, ""))
	a := g.submit("/r", "x", map[string]string{"Idempotency-Key": "order-7"})
	b := g.submit("/r", "x", map[string]string{"Idempotency-Key": "order-7"})
	c := g.submit("/r", "x", map[string]string{"Idempotency-Key": "order-8"})
	if a.ID != b.ID || a.ID == c.ID {
		t.Fatalf("ids %s %s %s", a.ID, b.ID, c.ID)
	}
	g.await(a.ID, 20*time.Second)
	g.await(c.ID, 20*time.Second)
	// One delivery for the key, and no second one later: watched for a window.
	if n := len(be.hitsFor(a.ID)); n != 1 {
		t.Fatalf("backend got the keyed request %d times", n)
	}
	wait.Never(t, 200*time.Millisecond, "the keyed request delivered again", func() bool { return len(be.hitsFor(a.ID)) != 1 })
}

func TestAdminBackendsAndPause(t *testing.T) {
	integration(t)
	be := newBackend(t, nil)
	g := startGateway(t, `
routes: [{ name: r, path: /r, backend: b }]
backends:
`+backendCfg("b", be.URL, "    rate: 200\n    burst: 20\n    concurrency: 16\n    max_backlog: 5\n"))
	resp, body := do(t, "GET", g.admin+"/admin/backends", "", nil)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"name":"b","rate":200,"burst":20,"concurrency":16,"adaptive":false,"paused":false`) {
		t.Fatalf("backends: %d %s", resp.StatusCode, body)
	}
	resp, body = do(t, "PATCH", g.admin+"/admin/backends/b", `{"paused":true,"rate":50,"concurrency":4}`, nil)
	var got struct {
		Rate        float64
		Concurrency int
		Paused      bool
	}
	_ = json.Unmarshal(body, &got)
	if resp.StatusCode != 200 || got.Rate != 50 || got.Concurrency != 4 || !got.Paused {
		t.Fatalf("patch: %d %s", resp.StatusCode, body)
	}
	// Paused (the PATCH answered once the pause was in force): requests wait
	// in the queue. Past max_backlog, ingress answers 503.
	var ids []string
	saw503 := false
	for range 12 {
		resp, body := do(t, "POST", g.base+"/r", "x", nil)
		switch resp.StatusCode {
		case 202:
			var a accepted
			_ = json.Unmarshal(body, &a)
			ids = append(ids, a.ID)
		case 503:
			saw503 = true
			if resp.Header.Get("Retry-After") == "" || resp.Header.Get("Content-Type") != "application/problem+json" {
				t.Fatalf("503 without Retry-After or problem+json: %v", resp.Header)
			}
		default:
			t.Fatalf("submit: %d %s", resp.StatusCode, body)
		}
	}
	if !saw503 || len(ids) < 5 {
		t.Fatalf("max_backlog 5: %d accepted, 503 seen %v", len(ids), saw503)
	}
	// Nothing reaches a paused backend: watched for a window.
	wait.Never(t, 300*time.Millisecond, "a delivery to the paused backend", func() bool { return be.count() != 0 })
	start := time.Now()
	do(t, "PATCH", g.admin+"/admin/backends/b", `{"paused":false}`, nil)
	for _, id := range ids {
		g.await(id, 20*time.Second)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("unpause took %v to drain %d requests", el, len(ids))
	}

	for body, want := range map[string]int{
		`{"rate":-1}`: 400, `{"concurrency":0}`: 400, `{"nope":1}`: 400, `not json`: 400, `{"adaptive":"yes"}`: 400,
	} {
		resp, b := do(t, "PATCH", g.admin+"/admin/backends/b", body, nil)
		if resp.StatusCode != want || resp.Header.Get("Content-Type") != "application/problem+json" {
			t.Errorf("PATCH %s: %d %s", body, resp.StatusCode, b)
		}
	}
	if resp, _ := do(t, "PATCH", g.admin+"/admin/backends/nope", `{"rate":1}`, nil); resp.StatusCode != 404 {
		t.Errorf("PATCH unknown backend: %d", resp.StatusCode)
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		if resp, b := do(t, "GET", g.admin+p, "", nil); resp.StatusCode != 200 {
			t.Errorf("%s: %d %s", p, resp.StatusCode, b)
		}
	}
}

// TestRetryAfterEstimate: the 202's Retry-After follows the backlog over the
// drain rate.
func TestRetryAfterEstimate(t *testing.T) {
	integration(t)
	t.Parallel()
	be := newBackend(t, nil)
	g := startGateway(t, `
routes: [{ name: r, path: /r, backend: b }]
backends:
`+backendCfg("b", be.URL, "    rate: 10\n"))
	do(t, "PATCH", g.admin+"/admin/backends/b", `{"paused":true}`, nil)
	var last string
	for range 50 {
		resp, _ := do(t, "POST", g.base+"/r", "x", nil)
		last = resp.Header.Get("Retry-After")
	}
	var secs int
	fmt.Sscan(last, &secs)
	if secs < 4 || secs > 7 {
		t.Fatalf("Retry-After with 50 waiting at 10/s: %q, want about 5", last)
	}
}

func TestAdminToken(t *testing.T) {
	integration(t)
	t.Parallel()
	be := newBackend(t, nil)
	g := startGateway(t, `
admin_token: s3cret
routes: [{ name: r, path: /r, backend: b }]
backends:
`+backendCfg("b", be.URL, ""))
	if resp, _ := do(t, "GET", g.admin+"/admin/backends", "", nil); resp.StatusCode != 401 {
		t.Fatalf("no token: %d", resp.StatusCode)
	}
	if resp, _ := do(t, "GET", g.admin+"/admin/backends", "", map[string]string{"Authorization": "Bearer s3cret"}); resp.StatusCode != 200 {
		t.Fatalf("with token: %d", resp.StatusCode)
	}
	if resp, _ := do(t, "GET", g.admin+"/healthz", "", nil); resp.StatusCode != 200 {
		t.Fatalf("healthz needs no token: %d", resp.StatusCode)
	}
}

func TestConcurrentSubmitsAllDelivered(t *testing.T) {
	integration(t)
	t.Parallel()
	be := newBackend(t, nil)
	g := startGateway(t, `
routes: [{ name: r, path: /r, backend: b }]
backends:
`+backendCfg("b", be.URL, "    concurrency: 32\n"))
	var mu sync.Mutex
	ids := map[string]bool{}
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				a := g.submit("/r", fmt.Sprintf(`{"w":%d,"i":%d}`, w, i), nil)
				mu.Lock()
				ids[a.ID] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(ids) != 400 {
		t.Fatalf("%d distinct ids for 400 submits", len(ids))
	}
	for id := range ids {
		if r := g.await(id, 30*time.Second); r.Status != "succeeded" {
			t.Fatalf("%s: %+v", id, r)
		}
	}
}

// TestShippedConfigsAreValid: the configs the repository ships pass check;
// the container config, whose admin API listens on every interface, only
// with a token ($SLUICE_ADMIN_TOKEN, as docker-compose passes it).
func TestShippedConfigsAreValid(t *testing.T) {
	check := func(p string) (string, error) {
		var out, errb strings.Builder
		err := run(t.Context(), []string{"check", "-config", p}, &out, &errb, nil)
		return errb.String(), err
	}
	t.Setenv("SLUICE_ADMIN_TOKEN", "")
	if _, err := check("../../sluice.yaml"); err != nil {
		t.Errorf("sluice.yaml: %v", err)
	}
	// Its commented-out auth example, uncommented, is valid too.
	raw, err := os.ReadFile("../../sluice.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	inAuth := false
	for _, l := range strings.Split(string(raw), "\n") {
		switch {
		case strings.HasPrefix(l, "#auth:"):
			inAuth = true
			l = l[1:]
		case inAuth && strings.HasPrefix(l, "#  "):
			l = l[1:]
		case strings.TrimSpace(l) == "#clients: [demo]           # with auth: only these clients (others 403)":
			l = strings.Replace(l, "#clients", "clients", 1)
		default:
			inAuth = false
		}
		lines = append(lines, l)
	}
	withAuth := strings.Join(lines, "\n")
	if !strings.Contains(withAuth, "\nauth:\n") || !strings.Contains(withAuth, "\n    clients: [demo]") {
		t.Fatal("sluice.yaml's auth example is not where this test looks for it")
	}
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "schemas"), 0o755); err != nil {
		t.Fatal(err)
	}
	schema, err := os.ReadFile("../../schemas/log.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "schemas", "log.json"), schema, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sluice.yaml"), []byte(withAuth), 0o644); err != nil {
		t.Fatal(err)
	}
	if msg, err := check(filepath.Join(dir, "sluice.yaml")); err != nil {
		t.Errorf("sluice.yaml with its auth example: %v %s", err, msg)
	}
	if msg, err := check("../../deploy/sluice-kafka.yaml"); err == nil || !strings.Contains(msg, "admin_listen:") {
		t.Errorf("deploy config without a token: %v %s, want admin_listen refused", err, msg)
	}
	t.Setenv("SLUICE_ADMIN_TOKEN", "s3cret")
	if msg, err := check("../../deploy/sluice-kafka.yaml"); err != nil {
		t.Errorf("deploy config with a token: %v\n%s", err, msg)
	}
}
