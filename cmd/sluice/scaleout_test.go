package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"sort"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/internal/wait"
)

// startRoles starts `sluice serve -roles roles` as a child process.
func startRoles(t *testing.T, cfgPath, roles string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(sluiceBinary(t), "serve", "-config", cfgPath, "-roles", roles), exited: make(chan error, 1)}
	return p.start(t)
}

// TestScaleOutRateHoldsInTotal: two worker processes share one backend's
// rate: the backend sees rate/s in total, not twice it — on Kafka (shares
// by assigned partitions) and RabbitMQ (competing consumers).
func TestScaleOutRateHoldsInTotal(t *testing.T) {
	integration(t)
	if testing.Short() {
		t.Skip("multi-process test")
	}
	eachBroker(t, []string{"kafka", "rabbitmq"}, []string{"b"}, func(t *testing.T, _, brokerCfg, prefix string) {
		scaleOut(t, brokerCfg, prefix)
	})
}

func scaleOut(t *testing.T, brokerCfg, prefix string) {
	be := newBackend(t, nil)
	dir := t.TempDir()
	cfg := splitConfig(t, dir, brokerCfg, prefix, be.URL, "    rate: 50\n    burst: 1\n    concurrency: 8\n")
	front := startRoles(t, cfg, "ingress,collector")
	w1 := startRoles(t, cfg, "worker")
	w2 := startRoles(t, cfg, "worker")

	ids := submitStream(front.base, 800, nil, nil)
	if len(ids) != 800 {
		t.Fatalf("%d of 800 accepted", len(ids))
	}
	// Measure once both workers deliver and have split the backend between
	// them (each its part, the parts adding up to the whole).
	wait.For(t, 60*time.Second, "both workers delivering, each with its share", func() bool {
		s1, s2 := workerStats(t, w1), workerStats(t, w2)
		return s1.Attempts > 0 && s2.Attempts > 0 && s1.Share < 1 && s2.Share < 1 && math.Abs(s1.Share+s2.Share-1) < 0.01
	})
	start := be.count()
	time.Sleep(6 * time.Second) // the measurement window
	got := float64(be.count()-start) / 6
	t.Logf("backend saw %.1f deliveries/s from two worker processes at rate 50", got)
	if got < 45 || got > 55 {
		t.Fatalf("%.1f/s in total, want 50 ± 10%%", got)
	}
	// Every request still ends succeeded, polled through the front process.
	sort.Strings(ids)
	awaitAll(t, front.base, ids[:20], 60*time.Second)
}

// workerStats is what a worker process's admin API says of backend b.
func workerStats(t *testing.T, p *proc) (s struct {
	Share    float64
	Attempts int64
}) {
	t.Helper()
	resp, body := do(t, "GET", p.admin+"/admin/backends/b", "", nil)
	var b struct {
		Stats struct {
			Share    float64 `json:"share"`
			Attempts int64   `json:"attempts"`
		} `json:"stats"`
	}
	if err := json.Unmarshal(body, &b); err != nil || resp.StatusCode != 200 {
		t.Fatalf("worker's /admin/backends/b: %d %s", resp.StatusCode, body)
	}
	s.Share, s.Attempts = b.Stats.Share, b.Stats.Attempts
	return s
}

// splitConfig is a config for separate ingress, worker and collector
// processes: the given broker, Redis as the shared result store, route /r
// to backend b.
func splitConfig(t *testing.T, dir, brokerCfg, prefix, backendURL, backendExtra string) string {
	return writeConfig(t, dir, brokerCfg+fmt.Sprintf(`
log: { level: info }
results:
  store: redis
  redis: { addr: %q, key_prefix: %q }
routes: [{ name: r, path: /r, backend: b }]
backends:
`, redisAddrForTests(), prefix)+backendCfg("b", backendURL, backendExtra))
}

func redisAddrForTests() string {
	if a := os.Getenv("REDIS_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

// TestWorkerKilledPartitionsMove: SIGKILL of one of two worker processes
// mid-stream: the other takes over its partitions and every request that
// got a 202 succeeds.
func TestWorkerKilledPartitionsMove(t *testing.T) {
	integration(t)
	t.Parallel()
	if testing.Short() {
		t.Skip("multi-process test")
	}
	addrs, prefix := kafkaBrokers(t)
	be := newBackend(t, func(h hit, n int) (int, map[string]string, string) {
		time.Sleep(20 * time.Millisecond)
		return 200, nil, "ok"
	})
	dir := t.TempDir()
	cfg := splitConfig(t, dir, kafkaCfg(addrs, prefix), prefix, be.URL, "    rate: 100\n    concurrency: 8\n")
	front := startRoles(t, cfg, "ingress,collector")
	victim := startRoles(t, cfg, "worker")
	startRoles(t, cfg, "worker")
	ids := submitStream(front.base, 600, nil, nil)
	if len(ids) != 600 {
		t.Fatalf("%d of 600 accepted", len(ids))
	}
	wait.For(t, 60*time.Second, "150 deliveries", func() bool { return be.count() >= 150 })
	if err := victim.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed a worker after %d deliveries", be.count())
	awaitAll(t, front.base, ids, 120*time.Second)
	for _, id := range ids {
		if len(be.hitsFor(id)) == 0 {
			t.Fatalf("%s succeeded without reaching the backend", id)
		}
	}
}
