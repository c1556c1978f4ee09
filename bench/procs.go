package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// ---- child processes ----

// child is this program run again in a helper role (-bare-server,
// -kfake-server), in its own process like sluice, so that it does not share
// the load generator's scheduler.
type child struct {
	cmd  *exec.Cmd
	addr string // the first line it printed
}

func startChild(args ...string) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find own binary: %w", err)
	}
	cmd := exec.Command(self, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("start %v: %w", args, err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %v: %w", args, err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("read address of %v: %w", args, err)
	}
	return &child{cmd: cmd, addr: strings.TrimSpace(line)}, nil
}

func (c *child) stop()              { _ = c.cmd.Process.Kill(); _ = c.cmd.Wait() }
func (c *child) cpu() time.Duration { return procCPU(c.cmd.Process.Pid) }

// procCPU returns a process's user+system CPU time so far, 0 if unknown.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// procRSS returns a process's resident set size in MiB, 0 if unknown.
func procRSS(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			kb, _ := strconv.ParseFloat(strings.Fields(l)[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// ---- sluice as a child process ----

// sluiceConfig is what a part changes in sluice's config. Backend lines are
// the sink backend's keys, one "key: value" a line.
type sluiceConfig struct {
	top      string // top-level keys, e.g. "ack: durable"
	backend  string
	broker   string // the broker key; "" is the embedded broker in a temporary directory
	embedded string // with the embedded broker: more of its keys, e.g. "sync: always"
	results  string // more keys of results, e.g. "ttl: 2m"
	route    string // more keys of the route, e.g. "rate_limit: { rate: 1000 }"
}

// moreKeys is keys (cfg.results, cfg.route) as more keys of a flow map.
func moreKeys(keys string) string {
	if keys == "" {
		return ""
	}
	return ", " + keys
}

type sluiceProc struct {
	cmd         *exec.Cmd
	addr, admin string
	dir         string
}

// startSluice starts bin/sluice with cfg in front of the sink and waits
// until it says it is up.
func startSluice(bin, sinkURL string, cfg sluiceConfig) (*sluiceProc, error) {
	dir, err := os.MkdirTemp("", "sluice-bench")
	if err != nil {
		return nil, fmt.Errorf("make temporary directory: %w", err)
	}
	brokerCfg := cfg.broker
	if brokerCfg == "" {
		extra := ""
		if cfg.embedded != "" {
			extra = ", " + cfg.embedded
		}
		brokerCfg = "broker: { embedded: { dir: " + filepath.Join(dir, "q") + extra + " } }"
	}
	var backend strings.Builder
	for l := range strings.SplitSeq(strings.TrimSpace(cfg.backend), "\n") {
		if l != "" {
			backend.WriteString("    " + l + "\n")
		}
	}
	yaml := fmt.Sprintf(`listen: "127.0.0.1:0"
admin_listen: "127.0.0.1:0"
log: { level: info }
%s
%s
%s
results: { embedded: { dir: %s }%s }
routes: [{ name: logs, path: /v1/logs, backend: sink%s }]
backends:
  - name: sink
    urls: [%q]
%s`, cfg.top, *extraConfig, brokerCfg, filepath.Join(dir, "r"), moreKeys(cfg.results), moreKeys(cfg.route), sinkURL, backend.String())
	return launch(bin, dir, yaml)
}

// stop interrupts sluice, waits up to 20 s for it to finish, and removes
// its directory.
func (p *sluiceProc) stop() {
	_ = p.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
	_ = os.RemoveAll(p.dir)
}

// pause pauses or resumes deliveries to the sink backend.
func (p *sluiceProc) pause(paused bool) {
	body := fmt.Sprintf(`{"paused":%t}`, paused)
	req, _ := http.NewRequest("PATCH", "http://"+p.admin+"/admin/backends/sink", strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		resp.Body.Close()
	}
}

// alive reports whether the admin port answers /healthz with 200.
func (p *sluiceProc) alive() bool {
	resp, err := http.Get("http://" + p.admin + "/healthz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}

func (p *sluiceProc) cpu() time.Duration { return procCPU(p.cmd.Process.Pid) }
func (p *sluiceProc) rss() float64       { return procRSS(p.cmd.Process.Pid) }

// submitN posts n requests from 32 connections (for at most a minute) and
// returns how many were accepted.
func (p *sluiceProc) submitN(n int) int {
	r := measure(loadSpec{conns: 32, dur: time.Minute, maxCalls: int64(n)}, post(p.addr, "/v1/logs", 32))
	return r.byStatus[202]
}

// ---- the delivery sink ----

// sink is the backend sluice delivers to: it records when each request
// succeeded, and can fail every first attempt with 503.
type sink struct {
	url     string
	srv     *fasthttp.Server
	mu      sync.Mutex
	times   []time.Time
	seen    map[string]int
	fail1st atomic.Bool
}

// newSink listens on a free port; serve starts answering.
func newSink() (*sink, net.Listener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, fmt.Errorf("listen for the sink: %w", err)
	}
	s := &sink{seen: map[string]int{}, url: "http://" + ln.Addr().String() + "/ingest"}
	s.srv = &fasthttp.Server{Handler: s.handle}
	return s, ln, nil
}

func (s *sink) handle(ctx *fasthttp.RequestCtx) {
	id := string(ctx.Request.Header.Peek("X-Request-Id"))
	fail := s.fail1st.Load()
	s.mu.Lock()
	s.seen[id]++
	first := s.seen[id] == 1
	if !first || !fail {
		s.times = append(s.times, time.Now())
	}
	s.mu.Unlock()
	if first && fail {
		ctx.SetStatusCode(503)
		return
	}
	ctx.SetStatusCode(200)
	ctx.SetBodyString(`{"ok":true}`)
}

func (s *sink) reset(fail1st bool) {
	s.mu.Lock()
	s.times, s.seen = nil, map[string]int{}
	s.mu.Unlock()
	s.fail1st.Store(fail1st)
}

func (s *sink) successes() []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.times)
}

func (s *sink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.times)
}

// waitFor polls cond every tick until it holds or d has passed, and
// reports whether it held.
func waitFor(d, tick time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(tick)
	}
	return true
}

// launch writes config yaml into dir, starts `sluice serve` on it with
// args, and waits (at most 30 s) until it says it is up; on failure dir is
// removed. A process without the ingress role has no addr.
func launch(bin, dir, yaml string, args ...string) (*sluiceProc, error) {
	path := filepath.Join(dir, "sluice.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("write config: %w", err)
	}
	cmd := exec.Command(bin, append([]string{"serve", "-config", path}, args...)...)
	stderr, err := cmd.StderrPipe()
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("start %s (run `make build` first): %w", bin, err)
	}
	p := &sluiceProc{cmd: cmd, dir: dir}
	up := make(chan bool, 1)
	var last string
	go func() {
		sc := bufio.NewScanner(stderr)
		said := false
		for sc.Scan() {
			if said {
				continue // drain the log until sluice exits
			}
			var l struct{ Message, Listen, Admin string }
			if json.Unmarshal(sc.Bytes(), &l) == nil && l.Message == "sluice is up" {
				p.addr, p.admin, said = l.Listen, l.Admin, true
				up <- true
				continue
			}
			last = sc.Text()
		}
		if !said {
			up <- false
		}
	}()
	what := strings.TrimSpace("sluice " + strings.Join(args, " "))
	select {
	case ok := <-up:
		if ok {
			return p, nil
		}
		p.stop()
		return nil, fmt.Errorf("%s exited before saying it is up: %s", what, last)
	case <-time.After(30 * time.Second):
		p.stop()
		return nil, fmt.Errorf("%s: not up within 30 s", what)
	}
}
