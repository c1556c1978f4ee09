package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/internal/wait"
)

var (
	buildMu sync.Mutex
	built   = map[string]string{} // package -> binary
)

// buildOnce builds a main package once per test run and returns the binary.
func buildOnce(t *testing.T, pkg string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if bin, ok := built[pkg]; ok {
		return bin
	}
	dir, err := os.MkdirTemp("", "sluice-test-bin")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, filepath.Base(pkg))
	if pkg == "." {
		bin = filepath.Join(dir, "sluice")
	}
	if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	built[pkg] = bin
	return bin
}

// sluiceBinary is the real binary, built once per test run.
func sluiceBinary(t *testing.T) string { return buildOnce(t, ".") }

// proc is sluice running as a child process.
type proc struct {
	cmd        *exec.Cmd
	base       string // http://ingress
	admin      string // http://admin
	exited     chan error
	mu         sync.Mutex
	logs       strings.Builder
	exitStatus int
}

func startProc(t *testing.T, cfgPath string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(sluiceBinary(t), "serve", "-config", cfgPath), exited: make(chan error, 1)}
	return p.start(t)
}

func (p *proc) start(t *testing.T) *proc {
	t.Helper()
	stderr, _ := p.cmd.StderrPipe()
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	up := make(chan [2]string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.logs.WriteString(line + "\n")
			p.mu.Unlock()
			var l struct{ Message, Listen, Admin string }
			if json.Unmarshal([]byte(line), &l) == nil && l.Message == "sluice is up" {
				up <- [2]string{l.Listen, l.Admin}
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		p.exited <- p.cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		if t.Failed() {
			p.mu.Lock()
			t.Logf("sluice process log:\n%s", tail(p.logs.String(), 4000))
			p.mu.Unlock()
		}
	})
	select {
	case addr := <-up:
		p.base, p.admin = "http://"+addr[0], "http://"+addr[1]
	case err := <-p.exited:
		t.Fatalf("sluice exited at start: %v\n%s", err, p.logs.String())
	case <-time.After(30 * time.Second):
		t.Fatal("sluice did not come up in 30s")
	}
	return p
}

// submitStream posts from 8 clients until stop closes or max is reached,
// returning the ids that got a 202.
func submitStream(base string, max int, stop <-chan struct{}, count *atomic.Int64) []string {
	var mu sync.Mutex
	var ids []string
	var wg sync.WaitGroup
	c := &http.Client{Timeout: 5 * time.Second}
	per := max / 8
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := c.Post(base+"/r", "application/json", strings.NewReader(fmt.Sprintf(`{"w":%d,"i":%d}`, w, i)))
				if err != nil {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				var a accepted
				_ = json.NewDecoder(resp.Body).Decode(&a)
				resp.Body.Close()
				if resp.StatusCode == 202 {
					if count != nil {
						count.Add(1)
					}
					mu.Lock()
					ids = append(ids, a.ID)
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return ids
}

// awaitAll polls until every id succeeded. An id may read 404 for a moment
// after a crash, until its redelivery records it again.
func awaitAll(t *testing.T, base string, ids []string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	c := &http.Client{Timeout: 10 * time.Second}
	for _, id := range ids {
		for {
			resp, err := c.Get(base + "/v1/requests/" + id + "?wait=2s")
			var r record
			if err == nil {
				_ = json.NewDecoder(resp.Body).Decode(&r)
				resp.Body.Close()
			}
			if r.Status == "succeeded" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not succeeded after %v (status %q)", id, d, r.Status)
			}
			if r.Status == "" {
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
}

// TestKill9LosesNothing: SIGKILL mid-stream, restart on the same data: every
// id that got a 202 is delivered and succeeds.
func TestKill9LosesNothing(t *testing.T) {
	integration(t)
	t.Parallel()
	eachBrokerParallel(t, []string{"embedded", "rabbitmq"}, []string{"b"}, func(t *testing.T, _, brokerCfg, _ string) {
		kill9(t, brokerCfg)
	})
}

func kill9(t *testing.T, brokerCfg string) {
	be := newBackend(t, nil)
	dir := t.TempDir()
	cfg := writeConfig(t, dir, brokerCfg+`
log: { level: info }
shutdown_timeout: 10s
routes: [{ name: r, path: /r, backend: b }]
backends:
`+backendCfg("b", be.URL, "    rate: 150\n    concurrency: 8\n"))
	p := startProc(t, cfg)

	stop := make(chan struct{})
	idsCh := make(chan []string, 1)
	var n atomic.Int64
	go func() { idsCh <- submitStream(p.base, 8000, stop, &n) }()
	// Kill once deliveries are under way and submits are still coming.
	deadline := time.Now().Add(20 * time.Second)
	for (be.count() < 20 || n.Load() < 400) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.exited
	close(stop)
	ids := <-idsCh
	delivered := be.count()
	t.Logf("%d accepted before the kill, %d delivered", len(ids), delivered)
	if len(ids) < 400 || len(ids) >= 8000 || delivered >= len(ids) {
		t.Fatalf("the kill did not land mid-stream: %d accepted, %d delivered", len(ids), delivered)
	}

	p2 := startProc(t, cfg)
	awaitAll(t, p2.base, ids, 60*time.Second)
	for _, id := range ids {
		if len(be.hitsFor(id)) == 0 {
			t.Fatalf("%s succeeded but the backend never saw it", id)
		}
	}
}

// TestSIGTERMDrains: SIGTERM stops intake, lets deliveries in flight finish,
// exits 0 in time, and loses nothing that got a 202; after a restart every
// request is delivered exactly once, on every broker (the pools settle what
// is in flight before they close their subscriptions: closing first made
// RabbitMQ hand every in-flight request out again, and Kafka stop
// committing).
func TestSIGTERMDrains(t *testing.T) {
	integration(t)
	eachBroker(t, allBrokers, []string{"b"}, func(t *testing.T, _, brokerCfg, _ string) {
		sigtermDrains(t, brokerCfg)
	})
}

func sigtermDrains(t *testing.T, brokerCfg string) {
	be := newBackend(t, func(h hit, n int) (int, map[string]string, string) {
		time.Sleep(300 * time.Millisecond)
		return 200, nil, "ok"
	})
	dir := t.TempDir()
	cfg := writeConfig(t, dir, brokerCfg+`
log: { level: info }
shutdown_timeout: 10s
routes: [{ name: r, path: /r, backend: b }]
backends:
`+backendCfg("b", be.URL, "    concurrency: 4\n"))
	p := startProc(t, cfg)
	ids := submitStream(p.base, 40, nil, nil)
	if len(ids) != 40 {
		t.Fatalf("%d of 40 accepted", len(ids))
	}
	wait.For(t, 30*time.Second, "four deliveries in flight", func() bool { return be.count() >= 4 })
	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no exit within shutdown_timeout after SIGTERM")
	}
	delivered := be.count()
	took := time.Since(start)
	t.Logf("drained and exited in %v with %d of 40 delivered", took, delivered)
	if took > 5*time.Second {
		t.Errorf("the stop took %v with 300 ms deliveries in flight; something waited for its deadline", took)
	}
	if delivered >= 40 {
		t.Fatalf("all 40 delivered before the stop: the SIGTERM did not land mid-delivery")
	}
	p2 := startProc(t, cfg)
	awaitAll(t, p2.base, ids, 60*time.Second)
	// Every request reached the backend once: the ones in flight at SIGTERM
	// finished then, the rest after the restart.
	dups := 0
	for _, id := range ids {
		if n := len(be.hitsFor(id)); n == 0 {
			t.Fatalf("%s never delivered", id)
		} else if n > 1 {
			dups++
		}
	}
	if dups > 0 {
		t.Errorf("%d requests delivered twice across a clean SIGTERM", dups)
	}
}
