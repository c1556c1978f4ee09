package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// gw is a sluice started by a test.
type gw struct {
	t      *testing.T
	base   string // http://ingress
	admin  string // http://admin
	cancel context.CancelFunc
	done   chan error
}

// startGateway writes cfg (with DATA replaced by a temp dir) and runs
// `sluice serve` in-process on port 0.
func startGateway(t *testing.T, cfg string) *gw {
	t.Helper()
	dir := t.TempDir()
	return startGatewayIn(t, dir, cfg)
}

func startGatewayIn(t *testing.T, dir, cfg string) *gw {
	t.Helper()
	path := writeConfig(t, dir, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	addrs := make(chan [2]string, 1)
	g := &gw{t: t, cancel: cancel, done: make(chan error, 1)}
	var logs bytes.Buffer
	var mu sync.Mutex
	go func() {
		g.done <- run(ctx, []string{"serve", "-config", path}, io.Discard, lockedWriter{&mu, &logs},
			func(i, a string) { addrs <- [2]string{i, a} })
	}()
	select {
	case a := <-addrs:
		g.base, g.admin = "http://"+a[0], "http://"+a[1]
	case err := <-g.done:
		t.Fatalf("sluice did not start: %v\n%s", err, logs.String())
	case <-time.After(30 * time.Second):
		t.Fatal("sluice did not start within 30s")
	}
	t.Cleanup(func() {
		g.stop()
		if t.Failed() {
			mu.Lock()
			t.Logf("sluice log:\n%s", tail(logs.String(), 4000))
			mu.Unlock()
		}
	})
	return g
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func (g *gw) stop() {
	if g.cancel == nil {
		return
	}
	g.cancel()
	g.cancel = nil
	select {
	case err := <-g.done:
		if err != nil {
			g.t.Errorf("serve returned %v", err)
		}
	case <-time.After(30 * time.Second):
		g.t.Error("serve did not stop within 30s")
	}
}

func writeConfig(t *testing.T, dir, cfg string) string {
	t.Helper()
	cfg = strings.ReplaceAll(cfg, "DATA", dir)
	if !strings.Contains(cfg, "listen:") {
		cfg = "listen: \"127.0.0.1:0\"\nadmin_listen: \"127.0.0.1:0\"\n" + cfg
	}
	if !strings.Contains(cfg, "broker:") {
		cfg += "\nbroker: { embedded: { dir: " + filepath.Join(dir, "queue") + " } }\n"
	}
	if !strings.Contains(cfg, "results:") {
		cfg += "\nresults: { embedded: { dir: " + filepath.Join(dir, "results") + " } }\n"
	}
	if !strings.Contains(cfg, "log:") {
		cfg += "\nlog: { level: warn }\n"
	}
	path := filepath.Join(dir, "sluice.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

type accepted struct {
	ID        string `json:"id"`
	Status    string `json:"status"`
	StatusURL string `json:"status_url"`
}

type record struct {
	ID           string `json:"id"`
	Route        string `json:"route"`
	Backend      string `json:"backend"`
	Status       string `json:"status"`
	Attempts     int    `json:"attempts"`
	AcceptedAt   string `json:"accepted_at"`
	UpdatedAt    string `json:"updated_at"`
	CompletedAt  string `json:"completed_at"`
	LastError    string `json:"last_error"`
	DeadLettered bool   `json:"dead_lettered"`
	AttemptLog   []struct {
		Attempt    int    `json:"attempt"`
		At         string `json:"at"`
		Status     int    `json:"status"`
		Error      string `json:"error"`
		DurationMS int64  `json:"duration_ms"`
		Replay     int    `json:"replay"`
	} `json:"attempt_log"`
	Response *struct {
		Status       int               `json:"status"`
		Headers      map[string]string `json:"headers"`
		Body         string            `json:"body"`
		BodyEncoding string            `json:"body_encoding"`
	} `json:"response"`
}

var client = &http.Client{Timeout: 40 * time.Second}

func do(t *testing.T, method, url string, body string, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	return send(t, req)
}

// doTraced is do, without headers, with trace's hooks on the request.
func doTraced(t *testing.T, method, url string, trace *httptrace.ClientTrace) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return send(t, req.WithContext(httptrace.WithClientTrace(req.Context(), trace)))
}

// send sends req and reads its answer whole.
func send(t *testing.T, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// submit posts body to path and expects a 202.
func (g *gw) submit(path, body string, hdr map[string]string) accepted {
	g.t.Helper()
	resp, b := do(g.t, "POST", g.base+path, body, hdr)
	if resp.StatusCode != 202 {
		g.t.Fatalf("submit %s: %d %s", path, resp.StatusCode, b)
	}
	var a accepted
	if err := json.Unmarshal(b, &a); err != nil {
		g.t.Fatalf("submit %s: body %s: %v", path, b, err)
	}
	return a
}

func (g *gw) poll(id string) (int, record) {
	g.t.Helper()
	resp, b := do(g.t, "GET", g.base+"/v1/requests/"+id, "", nil)
	var r record
	if resp.StatusCode == 200 {
		if err := json.Unmarshal(b, &r); err != nil {
			g.t.Fatalf("poll body %s: %v", b, err)
		}
	}
	return resp.StatusCode, r
}

// await long-polls id until it is terminal or d passes.
func (g *gw) await(id string, d time.Duration) record {
	g.t.Helper()
	return g.awaitAs(id, nil, d)
}

// awaitAs long-polls id with the client's credentials (hdr) until it is
// terminal, failing the test when d passes first.
func (g *gw) awaitAs(id string, hdr map[string]string, d time.Duration) record {
	g.t.Helper()
	deadline := time.Now().Add(d)
	for {
		resp, b := do(g.t, "GET", g.base+"/v1/requests/"+id+"?wait=5s", "", hdr)
		if resp.StatusCode != 200 {
			g.t.Fatalf("poll %s: %d %s", id, resp.StatusCode, b)
		}
		var r record
		_ = json.Unmarshal(b, &r)
		if r.Status == "succeeded" || r.Status == "failed" {
			return r
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("request %s still %s after %v", id, r.Status, d)
		}
	}
}

// hit is one request a test backend received.
type hit struct {
	Method, Path, Query string
	Header              http.Header
	Body                string
	At                  time.Time
}

// backend is a test HTTP backend whose answers a test scripts.
type backend struct {
	*httptest.Server
	mu      sync.Mutex
	hits    []hit
	respond func(h hit, n int) (int, map[string]string, string) // n: hits so far for this request id
}

func newBackend(t *testing.T, respond func(h hit, n int) (int, map[string]string, string)) *backend {
	b := &backend{respond: respond}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		h := hit{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Header: r.Header.Clone(), Body: string(body), At: time.Now()}
		b.mu.Lock()
		b.hits = append(b.hits, h)
		n := 0
		for _, x := range b.hits {
			if x.Header.Get("X-Request-Id") == h.Header.Get("X-Request-Id") {
				n++
			}
		}
		respond := b.respond
		b.mu.Unlock()
		status, hdr, out := 200, map[string]string(nil), `{"ok":true}`
		if respond != nil {
			status, hdr, out = respond(h, n)
		}
		for k, v := range hdr {
			w.Header().Set(k, v)
		}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, out)
	}))
	t.Cleanup(b.Close)
	return b
}

func (b *backend) hitsFor(id string) []hit {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []hit
	for _, h := range b.hits {
		if h.Header.Get("X-Request-Id") == id {
			out = append(out, h)
		}
	}
	return out
}

func (b *backend) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.hits)
}

func (b *backend) setRespond(f func(h hit, n int) (int, map[string]string, string)) {
	b.mu.Lock()
	b.respond = f
	b.mu.Unlock()
}

func backendCfg(name, url, extra string) string {
	return fmt.Sprintf("  - name: %s\n    urls: [%q]\n%s", name, url, extra)
}

func filepathAbs(p string) (string, error) { return filepath.Abs(p) }

func jsonDecode(resp *http.Response, v any) error {
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

// stream submits from 4 clients until stopped (bounded by max each),
// keeping the ids that got a 202 and counting 503s.
type stream struct {
	mu   sync.Mutex
	ids  []string
	n503 atomic.Int64
	stop chan struct{}
	wg   sync.WaitGroup
}

func startStream(t *testing.T, base string, max int) *stream {
	s := &stream{stop: make(chan struct{})}
	c := &http.Client{Timeout: 5 * time.Second}
	for w := range 4 {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for i := 0; i < max; i++ {
				select {
				case <-s.stop:
					return
				default:
				}
				resp, err := c.Post(base+"/r", "application/json", strings.NewReader(fmt.Sprintf(`{"w":%d,"i":%d}`, w, i)))
				if err != nil {
					time.Sleep(20 * time.Millisecond)
					continue
				}
				var a accepted
				_ = jsonDecode(resp, &a)
				switch resp.StatusCode {
				case 202:
					s.mu.Lock()
					s.ids = append(s.ids, a.ID)
					s.mu.Unlock()
				case 503:
					s.n503.Add(1)
					if resp.Header.Get("Retry-After") == "" {
						t.Error("503 without Retry-After")
					}
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	return s
}

func (s *stream) count() int { s.mu.Lock(); defer s.mu.Unlock(); return len(s.ids) }

// waitFor waits until n submits were accepted, failing after 2 minutes.
func (s *stream) waitFor(t *testing.T, n int, what string) {
	t.Helper()
	deadline := time.Now().Add(120 * time.Second)
	for s.count() < n {
		if time.Now().After(deadline) {
			t.Fatalf("submits not accepted again after %s (%d so far)", what, s.count())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// end stops the stream and returns the accepted ids.
func (s *stream) end() []string {
	close(s.stop)
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.ids)
}

// integration skips t under -short (the unit-test loop): it runs the
// gateway against a broker, or a subprocess.
func integration(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: runs the gateway; go test without -short")
	}
}
