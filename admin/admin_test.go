package admin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/sluice-gw/sluice/backlog"
	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/config"
	"github.com/sluice-gw/sluice/job"
	"github.com/sluice-gw/sluice/metering"
	"github.com/sluice-gw/sluice/wire"
	"github.com/sluice-gw/sluice/workers"
)

// fakeBroker holds one backend's dead letters; nothing else works.
type fakeBroker struct {
	dead      []broker.DeadLetter
	published []string
}

var _ broker.Broker = (*fakeBroker)(nil)

func (f *fakeBroker) Publish(_ context.Context, topic string, _ broker.Message) error {
	f.published = append(f.published, topic)
	return nil
}
func (f *fakeBroker) Subscribe(context.Context, string, broker.SubscribeOptions) (broker.Subscription, error) {
	return nil, errors.New("not in this test")
}
func (f *fakeBroker) ListDead(context.Context, string, int) ([]broker.DeadLetter, error) {
	return f.dead, nil
}
func (f *fakeBroker) ReadDead(_ context.Context, _ string, pos []string) ([]broker.DeadLetter, error) {
	var out []broker.DeadLetter
	for _, d := range f.dead {
		for _, p := range pos {
			if d.Pos == p {
				out = append(out, d)
			}
		}
	}
	return out, nil
}
func (f *fakeBroker) TakeDead(context.Context, string, []string) error { f.dead = nil; return nil }
func (f *fakeBroker) Stats(context.Context, string) (broker.QueueStats, error) {
	return broker.QueueStats{}, nil
}
func (f *fakeBroker) Ping(context.Context) error    { return nil }
func (f *fakeBroker) Close() error                  { return nil }
func (f *fakeBroker) Run(ctx context.Context) error { <-ctx.Done(); return nil }

type fakeBacklog struct{ est backlog.Estimate }

func (f fakeBacklog) Estimate(string, float64, int) backlog.Estimate { return f.est }

func testHandler(t *testing.T, token string) (*Handler, *fakeBroker) {
	t.Helper()
	cfg, err := config.Parse([]byte(`
routes: [{name: r, path: /r, backend: logs}]
backends: [{name: logs, urls: ["http://127.0.0.1:1/"], rate: 20, concurrency: 8}]
`), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	br := &fakeBroker{}
	m := workers.NewManager(cfg, br, zerolog.Nop())
	dead := workers.NewDeadLetters(br, m.Names(), nil, zerolog.Nop())
	est := backlog.Estimate{Depth: 12, Drain: 4, Wait: 3250 * time.Millisecond}
	return New(token, false, m, dead, fakeBacklog{est}, []Check{{Name: "broker", Ping: br.Ping}}), br
}

func serve(h http.Handler, method, path, body string, hdr map[string]string) (*http.Response, string) {
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	req.Host = "127.0.0.1:9090" // as a browser or curl on the machine sends it
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	b, _ := io.ReadAll(rec.Result().Body)
	return rec.Result(), string(b)
}

// TestProblems: every error of the admin port is the client port's
// problem+json — unknown paths and methods included — with details that
// read as written.
func TestProblems(t *testing.T) {
	h, _ := testHandler(t, "")
	cases := []struct {
		name, method, path, body string
		status                   int
		typ, detail              string
	}{
		{"unknown path", "GET", "/nope", "", 404, "/problems/not-found", "no admin endpoint at /nope"},
		{"wrong method", "DELETE", "/admin/backends/logs", "", 405, "/problems/method-not-allowed", "accepts GET, HEAD, PATCH"},
		{"unknown backend", "GET", "/admin/backends/x>y", "", 404, "/problems/not-found", `unknown backend "x>y"`},
		{"bad patch value", "PATCH", "/admin/backends/logs", `{"rate":-1}`, 400, "/problems/bad-request", "rate: must be >= 0"},
		{"two JSON objects", "PATCH", "/admin/backends/logs", `{"rate":5}{"rate":6}`, 400, "/problems/bad-request", "one JSON object"},
		{"concurrency past the bound", "PATCH", "/admin/backends/logs", `{"concurrency":100000000000}`, 400, "/problems/bad-request", "concurrency: must be 1 to 100000"},
		{"bad patch body", "PATCH", "/admin/backends/logs", `{"speed":1}`, 400, "/problems/bad-request", "unknown field"},
		{"bad limit", "GET", "/admin/dead-letters?limit=0", "", 400, "/problems/bad-request", "limit"},
		{"replay without backend", "POST", "/admin/dead-letters/replay", `{}`, 400, "/problems/bad-request", "backend"},
		{"pprof off", "GET", "/debug/pprof/", "", 404, "/problems/not-found", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body := serve(h, c.method, c.path, c.body, nil)
			var p struct {
				Type, Title, Detail string
				Status              int
			}
			if resp.StatusCode != c.status || resp.Header.Get("Content-Type") != "application/problem+json" ||
				json.Unmarshal([]byte(body), &p) != nil || p.Type != c.typ || p.Status != c.status ||
				p.Title != http.StatusText(c.status) || !strings.Contains(p.Detail, c.detail) {
				t.Fatalf("%d %s %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
			}
			if strings.Contains(body, `\u003`) {
				t.Fatalf("escaped detail: %s", body)
			}
		})
	}
	if resp, _ := serve(h, "DELETE", "/admin/backends/logs", "", nil); resp.Header.Get("Allow") == "" {
		t.Fatal("405 without Allow")
	}
}

func TestToken(t *testing.T) {
	h, _ := testHandler(t, "s3cret")
	if resp, _ := serve(h, "GET", "/healthz", "", nil); resp.StatusCode != 200 {
		t.Fatalf("healthz behind the token: %d", resp.StatusCode)
	}
	resp, body := serve(h, "GET", "/admin/backends", "", nil)
	if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") == "" || !strings.Contains(body, "/problems/unauthorized") {
		t.Fatalf("no token: %d %s", resp.StatusCode, body)
	}
	if resp, _ := serve(h, "GET", "/admin/backends", "", map[string]string{"Authorization": "Bearer wrong"}); resp.StatusCode != 401 {
		t.Fatalf("wrong token: %d", resp.StatusCode)
	}
	if resp, _ := serve(h, "GET", "/admin/backends", "", map[string]string{"Authorization": "Bearer s3cret"}); resp.StatusCode != 200 {
		t.Fatalf("right token: %d", resp.StatusCode)
	}
}

// TestBackends: the backend object, with the monitor's estimate, and a
// PATCH that takes effect and answers the object.
func TestBackends(t *testing.T) {
	h, _ := testHandler(t, "")
	_, body := serve(h, "GET", "/admin/backends", "", nil)
	var list struct{ Backends []Backend }
	if err := json.Unmarshal([]byte(body), &list); err != nil || len(list.Backends) != 1 {
		t.Fatalf("%s %v", body, err)
	}
	b := list.Backends[0]
	if b.Name != "logs" || b.Rate != 20 || b.Concurrency != 8 || b.Stats.QueueDepth != 12 ||
		b.Stats.DrainPerSecond != 4 || b.Stats.BacklogSeconds != 3.3 || b.Stats.Breaker != "closed" || b.Stats.Share != 1 ||
		b.Adaptive || b.Stats.ConcurrencyLimit != 8 {
		t.Fatalf("backend %+v", b)
	}
	resp, body := serve(h, "PATCH", "/admin/backends/logs", `{"rate":5,"paused":true}`, nil)
	var got Backend
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &got) != nil || got.Rate != 5 || !got.Paused || got.Concurrency != 8 {
		t.Fatalf("patch: %d %s", resp.StatusCode, body)
	}
	if s, _ := h.Backends.Status("logs"); s.Rate != 5 || !s.Paused {
		t.Fatalf("limiter after patch: %+v", s)
	}
	// adaptive: the limit starts again from 1 and shows as
	// concurrency_limit; concurrency stays the ceiling. Off: back to it.
	for _, c := range []struct {
		body        string
		adaptive    bool
		concurrency int
		limit       int
	}{
		{`{"adaptive":true}`, true, 8, 1},
		{`{"concurrency":4}`, true, 4, 1},
		{`{"adaptive":false}`, false, 4, 4},
	} {
		resp, body := serve(h, "PATCH", "/admin/backends/logs", c.body, nil)
		var got Backend
		if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &got) != nil || got.Adaptive != c.adaptive ||
			got.Concurrency != c.concurrency || got.Stats.ConcurrencyLimit != c.limit {
			t.Fatalf("PATCH %s: %d %s, want adaptive %v, concurrency %d, concurrency_limit %d",
				c.body, resp.StatusCode, body, c.adaptive, c.concurrency, c.limit)
		}
	}
	if _, body := serve(h, "GET", "/admin/backends/logs", "", nil); !strings.Contains(body, `"concurrency":4,"adaptive":false,`) ||
		!strings.Contains(body, `"concurrency_limit":4}`) {
		t.Fatalf("backend object: %s", body)
	}
}

func TestDeadLettersAndReplay(t *testing.T) {
	h, br := testHandler(t, "")
	r := &job.Request{ID: "abc", Route: "r", Backend: "logs", Method: "POST", Body: []byte("{}"),
		AcceptedAt: time.Now().UTC(), Attempts: 5, LastError: "503 Service Unavailable", DeadAt: time.Now().UTC()}
	br.dead = []broker.DeadLetter{{Message: wire.EncodeRequest(r), Pos: "1"}}
	_, body := serve(h, "GET", "/admin/dead-letters?backend=logs", "", nil)
	if !strings.Contains(body, `"id":"abc"`) || !strings.Contains(body, `"attempts":5`) {
		t.Fatalf("list: %s", body)
	}
	if resp, _ := serve(h, "GET", "/admin/dead-letters?backend=nope", "", nil); resp.StatusCode != 404 {
		t.Fatalf("unknown backend: %d", resp.StatusCode)
	}
	resp, body := serve(h, "POST", "/admin/dead-letters/replay", `{"backend":"logs"}`, nil)
	if resp.StatusCode != 200 || strings.TrimSpace(body) != `{"replayed":1}` {
		t.Fatalf("replay: %d %s", resp.StatusCode, body)
	}
	if strings.Join(br.published, ",") != "requests.logs,results" {
		t.Fatalf("replay wrote %v", br.published)
	}
}

func TestReadyz(t *testing.T) {
	h, _ := testHandler(t, "")
	h.Ready = append(h.Ready, Check{Name: "results", Ping: func(context.Context) error { return errors.New("down") }})
	resp, body := serve(h, "GET", "/readyz", "", nil)
	if resp.StatusCode != 503 || !strings.Contains(body, `"results":"unavailable"`) || !strings.Contains(body, `"broker":"ok"`) {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
}

type fakeMeter []metering.ClientUsage

func (f fakeMeter) Snapshot() []metering.ClientUsage { return f }

// TestClients: GET /admin/clients answers the ingress's metering in
// SPEC §6's shape, an empty list without an ingress, behind the token.
func TestClients(t *testing.T) {
	h, _ := testHandler(t, "s3cret")
	auth := map[string]string{"Authorization": "Bearer s3cret"}
	if resp, body := serve(h, "GET", "/admin/clients", "", auth); resp.StatusCode != 200 || strings.TrimSpace(body) != `{"clients":[]}` {
		t.Fatalf("no ingress: %d %s", resp.StatusCode, body)
	}
	h.Meter = fakeMeter{{Client: "team-a", Routes: []metering.RouteUsage{{Route: "logs", Accepted: 3, Bytes: 42, Rejected: map[string]int64{"429": 2}}}}}
	resp, body := serve(h, "GET", "/admin/clients", "", auth)
	if want := `{"clients":[{"client":"team-a","routes":[{"route":"logs","accepted":3,"bytes":42,"rejected":{"429":2}}]}]}`; resp.StatusCode != 200 || strings.TrimSpace(body) != want {
		t.Fatalf("got %d %s, want %s", resp.StatusCode, body, want)
	}
	if resp, _ := serve(h, "GET", "/admin/clients", "", nil); resp.StatusCode != 401 {
		t.Fatalf("without the token: %d", resp.StatusCode)
	}
}

// TestMetricsEndpoint: GET /metrics hands the request to the metrics
// handler, behind the token; without one (metrics: false) it is a 404
// problem. The backend object shows the enforced concurrency limit.
func TestMetricsEndpoint(t *testing.T) {
	h, _ := testHandler(t, "s3cret")
	auth := map[string]string{"Authorization": "Bearer s3cret"}
	resp, body := serve(h, "GET", "/metrics", "", auth)
	if resp.StatusCode != 404 || !strings.Contains(body, "metrics: false") || resp.Header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("metrics off: %d %s", resp.StatusCode, body)
	}
	h.Metrics = http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) {
		rw.Header().Set("Content-Type", "text/plain; version=0.0.4")
		_, _ = io.WriteString(rw, "sluice_up 1\n")
	})
	if resp, body := serve(h, "GET", "/metrics", "", auth); resp.StatusCode != 200 || body != "sluice_up 1\n" {
		t.Fatalf("metrics on: %d %s", resp.StatusCode, body)
	}
	if resp, body := serve(h, "GET", "/metrics", "", nil); resp.StatusCode != 401 || strings.Contains(body, "sluice_up") {
		t.Fatalf("without the token: %d %s", resp.StatusCode, body)
	}
	if resp, _ := serve(h, "POST", "/metrics", "", auth); resp.StatusCode != 405 {
		t.Fatalf("POST /metrics: %d", resp.StatusCode)
	}
	_, body = serve(h, "GET", "/admin/backends/logs", "", auth)
	if !strings.Contains(body, `"concurrency_limit":8`) {
		t.Fatalf("no concurrency_limit in %s", body)
	}
}
