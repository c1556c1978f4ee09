package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/internal/wait"
)

// TestLargeBodiesOnKafka: a 1 MiB request (the default max_body) is
// accepted on Kafka, and a large response of "<" (JSON escaping made it six
// times larger, beyond the writer's 1 MiB batch) is stored once — the
// request is not delivered again and again while its outcome cannot be
// written.
func TestLargeBodiesOnKafka(t *testing.T) {
	integration(t)
	t.Parallel()
	big := strings.Repeat("<", 800<<10)
	be := newBackend(t, func(h hit, n int) (int, map[string]string, string) {
		return 200, map[string]string{"Content-Type": "text/html"}, big
	})
	addrs, prefix := kafkaBrokers(t)
	g := startGateway(t, kafkaCfg(addrs, prefix)+`
routes: [{ name: r, path: /r, backend: b }]
backends:
`+backendCfg("b", be.URL, ""))
	a := g.submit("/r", "x", nil)
	r := g.await(a.ID, 30*time.Second)
	if r.Status != "succeeded" || r.Response == nil || len(r.Response.Body) != len(big) {
		t.Fatalf("large response: status %s, body %d bytes", r.Status, len(r.Response.Body))
	}
	// A stuck outcome made a delivery about every second: watched for two.
	if n := len(be.hitsFor(a.ID)); n != 1 {
		t.Fatalf("backend got the request %d times", n)
	}
	wait.Never(t, 2*time.Second, "the request delivered again", func() bool { return len(be.hitsFor(a.ID)) != 1 })
	body := strings.Repeat("a", 1<<20)
	b := g.submit("/r", body, nil)
	if r := g.await(b.ID, 30*time.Second); r.Status != "succeeded" {
		t.Fatalf("1 MiB request: %+v", r)
	}
	if hits := be.hitsFor(b.ID); len(hits) != 1 || len(hits[0].Body) != 1<<20 {
		t.Fatalf("1 MiB request delivered %d times", len(hits))
	}
}

// TestTruncatedResponse: a response over 1 MiB is stored cut and marked;
// the replay carries a Content-Length that matches what it sends, not the
// original's, and says it is truncated.
func TestTruncatedResponse(t *testing.T) {
	integration(t)
	t.Parallel()
	be := newBackend(t, func(h hit, n int) (int, map[string]string, string) {
		return 200, map[string]string{"Content-Type": "text/plain", "ETag": `"v1"`}, strings.Repeat("z", 1536<<10)
	})
	g := startGateway(t, `
routes: [{ name: r, path: /r, backend: b }]
backends:
`+backendCfg("b", be.URL, ""))
	a := g.submit("/r", "x", nil)
	g.await(a.ID, 30*time.Second)
	_, raw := do(t, "GET", g.base+"/v1/requests/"+a.ID, "", nil)
	var rec struct {
		Response struct {
			Truncated bool              `json:"truncated"`
			Body      string            `json:"body"`
			Headers   map[string]string `json:"headers"`
		} `json:"response"`
	}
	if err := json.Unmarshal(raw, &rec); err != nil {
		t.Fatal(err)
	}
	if !rec.Response.Truncated || len(rec.Response.Body) != 1<<20 || rec.Response.Headers["Content-Length"] != "" || rec.Response.Headers["Etag"] != "" {
		t.Fatalf("stored: truncated %v, %d bytes, headers %v", rec.Response.Truncated, len(rec.Response.Body), rec.Response.Headers)
	}
	resp, body := do(t, "GET", g.base+"/v1/requests/"+a.ID+"/response", "", nil)
	if resp.ContentLength != int64(len(body)) || len(body) != 1<<20 || resp.Header.Get("X-Sluice-Truncated") != "true" || resp.Header.Get("Etag") != "" {
		t.Fatalf("replay: Content-Length %d, %d bytes, headers %v", resp.ContentLength, len(body), resp.Header)
	}
}

// TestReplayThatFailsAgain: replaying dead letters while the backend still
// fails puts every one of them back in the list, once each; none is lost
// by the take that follows the replay.
func TestReplayThatFailsAgain(t *testing.T) {
	integration(t)
	t.Parallel()
	eachBrokerParallel(t, allBrokers, []string{"b"}, func(t *testing.T, _, brokerCfg, _ string) {
		replayFailsAgain(t, brokerCfg)
	})
}

func replayFailsAgain(t *testing.T, brokerCfg string) {
	be := newBackend(t, func(h hit, n int) (int, map[string]string, string) { return 503, nil, "down" })
	g := startGateway(t, brokerCfg+`
routes: [{ name: r, path: /r, backend: b }]
backends:
`+backendCfg("b", be.URL, "    retry: { max_attempts: 1 }\n    breaker: { failures: 0 }\n"))
	var ids []string
	for i := range 30 {
		ids = append(ids, g.submit("/r", fmt.Sprint(i), nil).ID)
	}
	for _, id := range ids {
		if r := g.await(id, 30*time.Second); !r.DeadLettered {
			t.Fatalf("%s: %+v", id, r)
		}
	}
	listed := func() map[string]int {
		_, body := do(t, "GET", g.admin+"/admin/dead-letters?backend=b&limit=1000", "", nil)
		var l struct{ Items []struct{ ID string } }
		if err := json.Unmarshal(body, &l); err != nil {
			t.Fatalf("list: %s", body)
		}
		out := map[string]int{}
		for _, it := range l.Items {
			out[it.ID]++
		}
		return out
	}
	if n := len(listed()); n != 30 {
		t.Fatalf("%d dead letters listed, want 30", n)
	}
	_, body := do(t, "POST", g.admin+"/admin/dead-letters/replay", `{"backend":"b"}`, nil)
	if strings.TrimSpace(string(body)) != `{"replayed":30}` {
		t.Fatalf("replay: %s", body)
	}
	// Each fails again at once and is dead-lettered again.
	deadline := time.Now().Add(60 * time.Second)
	for {
		done := 0
		for _, id := range ids {
			if len(be.hitsFor(id)) >= 2 {
				if _, r := g.poll(id); r.DeadLettered && r.Status == "failed" {
					done++
				}
			}
		}
		if done == len(ids) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of 30 replays failed again in time", done)
		}
		time.Sleep(100 * time.Millisecond)
	}
	got := listed()
	for _, id := range ids {
		if got[id] != 1 {
			t.Errorf("%s listed %d times after its replay failed again, want once", id, got[id])
		}
	}
}

// TestDeadURLLeavesRotation: with one healthy url and one that refuses
// connections, no request is dead-lettered, a retry goes to the other url,
// and once the dead url is out, requests take about one attempt each.
func TestDeadURLLeavesRotation(t *testing.T) {
	integration(t)
	be := newBackend(t, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String() + "/"
	ln.Close() // connections to it are refused
	g := startGateway(t, fmt.Sprintf(`
routes: [{ name: r, path: /r, backend: b }]
backends:
  - name: b
    urls: [%q, %q]
    concurrency: 8
    retry: { max_attempts: 5, initial_backoff: 50ms, max_backoff: 200ms }
    breaker: { failures: 0 }
`, be.URL, dead))
	run := func(n int) (attempts, deadLettered int) {
		var ids []string
		for i := range n {
			ids = append(ids, g.submit("/r", fmt.Sprint(i), nil).ID)
		}
		for _, id := range ids {
			r := g.await(id, 30*time.Second)
			if r.Status != "succeeded" {
				deadLettered++
				t.Errorf("%s: %s after %d attempts (%s)", id, r.Status, r.Attempts, r.LastError)
			}
			attempts += r.Attempts
		}
		return attempts, deadLettered
	}
	warm, _ := run(20)
	attempts, _ := run(200)
	t.Logf("warm-up: 20 requests, %d attempts; then 200 requests, %d attempts", warm, attempts)
	if float64(attempts) > 1.05*200 {
		t.Fatalf("%d attempts for 200 requests once the dead url was out, want at most 210", attempts)
	}
}

// TestErrorTextHidesBackend: network errors read as categories, never the
// backend's address.
func TestErrorTextHidesBackend(t *testing.T) {
	integration(t)
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	g := startGateway(t, `
routes: [{ name: r, path: /r, backend: b }, { name: d, path: /d, backend: dns }]
backends:
`+backendCfg("b", "http://"+addr+"/x", "    retry: { max_attempts: 1 }\n")+
		backendCfg("dns", "http://no-such-host.invalid/x", "    retry: { max_attempts: 1 }\n"))
	for path, want := range map[string]string{"/r": "connection refused", "/d": "dns"} {
		a := g.submit(path, "x", nil)
		r := g.await(a.ID, 30*time.Second)
		if r.LastError != want {
			t.Errorf("%s: last_error %q, want %q", path, r.LastError, want)
		}
		_, poll := do(t, "GET", g.base+"/v1/requests/"+a.ID, "", nil)
		poll = withoutTimestamps(t, poll) // "21:47:53.5" is no leak of port 53
		_, replay := do(t, "GET", g.base+"/v1/requests/"+a.ID+"/response", "", nil)
		for _, leak := range []string{addr, "127.0.0.1", "no-such-host", ":53"} {
			if strings.Contains(string(poll), leak) || strings.Contains(string(replay), leak) {
				t.Errorf("%s: %q leaks in %s / %s", path, leak, poll, replay)
			}
		}
	}
}

// withoutTimestamps is a poll's body without its timestamps (its
// attempts' included).
func withoutTimestamps(t *testing.T, poll []byte) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(poll, &m); err != nil {
		t.Fatalf("poll body %s: %v", poll, err)
	}
	delete(m, "accepted_at")
	delete(m, "updated_at")
	delete(m, "completed_at")
	if log, ok := m["attempt_log"].([]any); ok {
		for _, a := range log {
			delete(a.(map[string]any), "at")
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestBadHeaderRefusedAtTheDoor: a header name Go's client cannot send
// gets 400 from ingress instead of failing attempts (four such requests
// used to open the breaker for everyone).
func TestBadHeaderRefusedAtTheDoor(t *testing.T) {
	integration(t)
	t.Parallel()
	be := newBackend(t, nil)
	g := startGateway(t, `
routes: [{ name: r, path: /r, backend: b }]
backends:
`+backendCfg("b", be.URL, "    breaker: { failures: 4, cooldown: 1m }\n"))
	host := strings.TrimPrefix(g.base, "http://")
	for range 5 {
		c, err := net.Dial("tcp", host)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "POST /r HTTP/1.1\r\nHost: x\r\nBad Name: v\r\nContent-Length: 1\r\n\r\nx")
		line, _ := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if !strings.Contains(line, " 400 ") {
			t.Fatalf("bad header name: %q", line)
		}
	}
	a := g.submit("/r", "x", nil)
	if r := g.await(a.ID, 30*time.Second); r.Status != "succeeded" {
		t.Fatalf("a good request after bad ones: %+v", r)
	}
	_, body := do(t, "GET", g.admin+"/admin/backends/b", "", nil)
	if !strings.Contains(string(body), `"breaker":"closed"`) {
		t.Fatalf("breaker: %s", body)
	}
}

// TestImmediatePoll: an id polled right after its 202 is never unknown.
func TestImmediatePoll(t *testing.T) {
	integration(t)
	t.Parallel()
	be := newBackend(t, nil)
	g := startGateway(t, `
routes: [{ name: r, path: /r, backend: b }]
backends:
`+backendCfg("b", be.URL, ""))
	immediatePolls(t, g.base, g.base)
}

func immediatePolls(t *testing.T, submitBase, pollBase string) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	missing := 0
	c := &http.Client{Timeout: 10 * time.Second}
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				resp, err := c.Post(submitBase+"/r", "text/plain", strings.NewReader(fmt.Sprint(w, i)))
				if err != nil {
					t.Error(err)
					return
				}
				var a accepted
				_ = jsonDecode(resp, &a)
				if resp.StatusCode != 202 {
					t.Errorf("submit: %d", resp.StatusCode)
					return
				}
				p, err := c.Get(pollBase + "/v1/requests/" + a.ID)
				if err != nil {
					t.Error(err)
					return
				}
				p.Body.Close()
				if p.StatusCode == 404 {
					mu.Lock()
					missing++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if missing > 0 {
		t.Fatalf("%d of 400 ids polled right after their 202 were unknown", missing)
	}
}

// TestImmediatePollAcrossProcesses: behind a load balancer, a poll that
// reaches another ingress process right after the 202 finds the id too
// (Redis shared store).
func TestImmediatePollAcrossProcesses(t *testing.T) {
	integration(t)
	t.Parallel()
	be := newBackend(t, nil)
	addrs, prefix := kafkaBrokers(t)
	cfg := splitConfig(t, t.TempDir(), kafkaCfg(addrs, prefix), prefix, be.URL, "")
	a := startRoles(t, cfg, "ingress,collector,worker")
	b := startRoles(t, cfg, "ingress")
	immediatePolls(t, a.base, b.base)
}
