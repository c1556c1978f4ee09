package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/config"
)

// demoOutput collects what `sluice demo` writes to stdout and signals when
// the banner has been written.
type demoOutput struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	banner chan struct{}
	once   sync.Once
}

func newDemoOutput() *demoOutput { return &demoOutput{banner: make(chan struct{})} }

func (o *demoOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	n, err := o.buf.Write(p)
	if strings.Contains(o.buf.String(), "Ctrl-C stops both") {
		o.once.Do(func() { close(o.banner) })
	}
	return n, err
}

func (o *demoOutput) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// shippedConfig writes the repository's config file rel (relative to the
// repository root) into dir, each old string replaced by its new one; every
// old string must occur, so a change to the file cannot silently skip a
// rewrite. The schema path becomes absolute.
func shippedConfig(t *testing.T, dir, rel string, replace ...string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("../..", rel))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for i := 0; i < len(replace); i += 2 {
		if !strings.Contains(s, replace[i]) {
			t.Fatalf("%s has no %q to rewrite for the test", rel, replace[i])
		}
		s = strings.ReplaceAll(s, replace[i], replace[i+1])
	}
	path := filepath.Join(dir, filepath.Base(rel))
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func freeAddr(t *testing.T) string { return fmt.Sprintf("127.0.0.1:%d", freePort(t)) }

// assertFree fails unless each address can be bound: nothing still holds it.
func assertFree(t *testing.T, addrs ...string) {
	t.Helper()
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			t.Errorf("%s is still held after the demo stopped: %v", a, err)
			continue
		}
		ln.Close()
	}
}

// TestDemoBanner runs `sluice demo` as `make run` does (sluice.yaml) and as
// the container image does (its CMD and baked-in config, from the
// Dockerfile), on free ports, and runs the banner's lines in bash as a user
// would paste them: the id is captured, the poll finds it delivered, the
// stats and admin lines answer. A banner that cannot be pasted, or a demo
// that does not deliver, fails here.
func TestDemoBanner(t *testing.T) {
	integration(t)
	for _, tool := range []string{"bash", "curl", "sed"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed: %v", tool, err)
		}
	}
	schema, err := filepath.Abs("../../schemas/log.json")
	if err != nil {
		t.Fatal(err)
	}
	fast := []string{"-latency", "5ms", "-jitter", "0s", "-fail-rate", "0"}
	cases := []struct {
		name  string
		setup func(t *testing.T, dir, ingress, admin, store string) (args []string, adminLines bool)
	}{
		{"make run", func(t *testing.T, dir, ingress, admin, store string) ([]string, bool) {
			cfg := shippedConfig(t, dir, "sluice.yaml",
				"127.0.0.1:8080", ingress, "127.0.0.1:9090", admin, "127.0.0.1:9001", store,
				"./data/", dir+"/", "schemas/log.json", schema)
			return append([]string{"demo", "-config", cfg, "-backend-listen", store}, fast...), true
		}},
		{"docker run", func(t *testing.T, dir, ingress, admin, store string) ([]string, bool) {
			img := readDockerfile(t)
			cfgRel := img.copySource(t, img.env["SLUICE_CONFIG"])
			_, port, _ := net.SplitHostPort(ingress)
			cfg := shippedConfig(t, dir, cfgRel,
				`listen: ":8080"`, `listen: ":`+port+`"`, "127.0.0.1:9090", admin, "127.0.0.1:9001", store,
				"/var/lib/sluice/", dir+"/", "../schemas/log.json", schema)
			t.Setenv("SLUICE_CONFIG", cfg)
			args := slicesReplace(img.cmd, ":9001", store)
			if !strings.Contains(strings.Join(args, " "), store) {
				t.Fatalf("CMD %q has no -backend-listen :9001 to point at a free port", img.cmd)
			}
			return append(args, fast...), false
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			ingress, admin, store := freeAddr(t), freeAddr(t), freeAddr(t)
			args, adminLines := c.setup(t, dir, ingress, admin, store)
			out := newDemoOutput()
			var logs bytes.Buffer
			var mu sync.Mutex
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- run(ctx, args, out, lockedWriter{&mu, &logs}, nil) }()
			stopped := false
			stop := func() {
				if stopped {
					return
				}
				stopped = true
				cancel()
				select {
				case err := <-done:
					if err != nil {
						t.Errorf("demo returned %v", err)
					}
				case <-time.After(30 * time.Second):
					t.Error("demo did not stop within 30s")
				}
			}
			t.Cleanup(func() {
				stop()
				if t.Failed() {
					mu.Lock()
					t.Logf("demo stdout:\n%s\nlog:\n%s", out.String(), tail(logs.String(), 4000))
					mu.Unlock()
				}
			})
			select {
			case <-out.banner:
			case err := <-done:
				stopped = true
				t.Fatalf("demo stopped before its banner: %v", err)
			case <-time.After(30 * time.Second):
				t.Fatal("no banner within 30s")
			}
			if resp, _ := do(t, "GET", "http://"+admin+"/readyz", "", nil); resp.StatusCode != 200 {
				t.Fatalf("banner printed while /readyz answers %d", resp.StatusCode)
			}
			banner := out.String()
			script := bannerScript(t, banner)
			if strings.Contains(script, "/admin/") != adminLines {
				t.Errorf("admin curl lines in the banner: %v, want %v (admin on %s, clients on %s)",
					!adminLines, adminLines, admin, ingress)
			}
			sh, cancelSh := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancelSh()
			got, err := exec.CommandContext(sh, "bash", "-c", script).CombinedOutput()
			if err != nil {
				t.Fatalf("the banner's lines in bash: %v\n%s\n--- script:\n%s", err, got, script)
			}
			want := []string{
				`"status":"succeeded"`, // the poll, with the id the POST gave
				"HTTP/1.1 200 OK",      // the backend's answer replayed
				`"stored":true`,
				`"received":`, // the demo store's /stats
			}
			if adminLines {
				want = append(want, `"name":"logstore"`, `"rate":5`)
			}
			for _, w := range want {
				if !strings.Contains(string(got), w) {
					t.Errorf("the banner's lines printed no %s:\n%s\n--- script:\n%s", w, got, script)
				}
			}
			if !regexp.MustCompile(`(?m)^[A-Za-z0-9_-]{24}$`).Match(got) {
				t.Errorf("the banner's first line did not echo an id:\n%s", got)
			}
			stop()
			assertFree(t, ingress, admin, store)
		})
	}
}

// bannerScript is the banner's shell lines, as a user pastes them.
func bannerScript(t *testing.T, banner string) string {
	t.Helper()
	_, rest, ok := strings.Cut(banner, "Try, in another terminal:\n")
	if !ok {
		t.Fatalf("banner without its curl lines:\n%s", banner)
	}
	body, _, ok := strings.Cut(rest, "  Ctrl-C stops both")
	if !ok {
		t.Fatalf("banner does not end with Ctrl-C stops both:\n%s", banner)
	}
	var lines []string
	for _, l := range strings.Split(body, "\n") {
		lines = append(lines, strings.TrimPrefix(l, "  "))
	}
	return strings.Join(lines, "\n")
}

func slicesReplace(s []string, old, new string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		if v == old {
			v = new
		}
		out[i] = v
	}
	return out
}

// TestDemoBannerOnlyOnceReady: while /readyz answers 503 (the result store
// is a Redis nobody runs) no banner is printed; after the wait `sluice demo`
// stops, says why, and leaves nothing running.
func TestDemoBannerOnlyOnceReady(t *testing.T) {
	integration(t)
	old := demoReadyTimeout
	demoReadyTimeout = 1500 * time.Millisecond
	t.Cleanup(func() { demoReadyTimeout = old })
	dir := t.TempDir()
	ingress, admin, store, redis := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	cfg := writeConfig(t, dir, fmt.Sprintf(`listen: %q
admin_listen: %q
shutdown_timeout: 2s
results: { store: redis, redis: { addr: %q } }
`, ingress, admin, redis)+"backends:\n"+backendCfg("logstore", "http://"+store+"/ingest", "")+
		"routes: [{name: logs, path: /v1/logs, backend: logstore}]\n")
	out := newDemoOutput()
	var logs bytes.Buffer
	start := time.Now()
	err := run(t.Context(), []string{"demo", "-config", cfg, "-backend-listen", store}, out, &logs, nil)
	if err == nil || !strings.Contains(err.Error(), "not ready after") || !strings.Contains(err.Error(), "503") {
		t.Errorf("demo with a store that is not there: %v, want not ready (503)", err)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("demo took %s to give up", d)
	}
	if s := out.String(); s != "" {
		t.Errorf("demo printed before /readyz answered 200:\n%s", s)
	}
	assertFree(t, ingress, admin, store)
}

// TestDemoCannotStart runs the built binary with one of its ports held by
// another program: it must exit 1 at once with a message that names the
// port, print no banner, and leave nothing running — in particular never
// serve with the port's holder as its backend.
func TestDemoCannotStart(t *testing.T) {
	integration(t)
	bin := sluiceBinary(t)
	cases := []struct {
		name string
		held func(ingress, admin, store string) string
		want func(addr string) []string
	}{
		{"demo backend's port", func(_, _, store string) string { return store },
			func(a string) []string {
				return []string{"the demo backend cannot listen on " + a, "already in use", "nothing was started"}
			}},
		{"sluice's client port", func(ingress, _, _ string) string { return ingress },
			func(a string) []string {
				return []string{"sluice cannot start", a, "already in use", "the demo backend was stopped"}
			}},
		{"sluice's admin port", func(_, admin, _ string) string { return admin },
			func(a string) []string {
				return []string{"sluice cannot start", a, "already in use", "the demo backend was stopped"}
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			ingress, admin, store := freeAddr(t), freeAddr(t), freeAddr(t)
			cfg := writeConfig(t, dir, fmt.Sprintf("listen: %q\nadmin_listen: %q\n", ingress, admin)+
				"backends:\n"+backendCfg("logstore", "http://"+store+"/ingest", "")+
				"routes: [{name: logs, path: /v1/logs, backend: logstore}]\n")
			heldAddr := c.held(ingress, admin, store)
			ln, err := net.Listen("tcp", heldAddr)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, "demo", "-config", cfg, "-backend-listen", store)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err = cmd.Run()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Fatalf("exit: %v, want status 1\n%s", err, stderr.String())
			}
			if ctx.Err() != nil {
				t.Fatal("demo did not exit within 30s")
			}
			for _, w := range c.want(heldAddr) {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr has no %q:\n%s", w, stderr.String())
				}
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout: %q, want no banner", stdout.String())
			}
			var free []string
			for _, a := range []string{ingress, admin, store} {
				if a != heldAddr {
					free = append(free, a)
				}
			}
			assertFree(t, free...)
			if c.name == "demo backend's port" {
				if _, err := os.Stat(filepath.Join(dir, "queue")); !os.IsNotExist(err) {
					t.Errorf("the queue's directory exists (%v): sluice started", err)
				}
			}
		})
	}
}

// TestDemoFooter: from the repository, as `make run` starts it, the banner
// ends with how to reset the data; elsewhere it says where the data is.
func TestDemoFooter(t *testing.T) {
	t.Setenv("SLUICE_ADMIN_TOKEN", "")
	t.Chdir("../..")
	cfg, err := config.Load("sluice.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	writeBanner(&b, bannerFor(cfg, "127.0.0.1:8080", "127.0.0.1:9090", "127.0.0.1:9001", *demoFlags(flagSet())))
	if want := "  Ctrl-C stops both; `make clean` resets the data.\n"; !strings.HasSuffix(b.String(), want+"\n") {
		t.Errorf("make run's banner ends with\n%s\nwant %q", tail(b.String(), 200), want)
	}
	t.Chdir(t.TempDir())
	if h := dataHint(cfg); !strings.Contains(h, "the data stays in "+filepath.Dir(cfg.Path(cfg.Broker.Embedded.Dir))) {
		t.Errorf("outside the repository: %q, want where the data is", h)
	}
}
