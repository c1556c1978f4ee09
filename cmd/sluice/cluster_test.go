package main

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/internal/wait"
)

// backendView is what a process's GET /admin/backends/b says, in the parts
// these tests read.
type backendView struct {
	Rate        float64 `json:"rate"`
	Concurrency int     `json:"concurrency"`
	Paused      bool    `json:"paused"`
	Stats       struct {
		InFlight       int     `json:"in_flight"`
		QueueDepth     int64   `json:"queue_depth"`
		DrainPerSecond float64 `json:"drain_per_second"`
		BacklogSeconds float64 `json:"backlog_seconds"`
		Share          float64 `json:"share"`
	} `json:"stats"`
	Tuning *struct {
		Rate    *float64 `json:"rate"`
		Paused  *bool    `json:"paused"`
		Version int64    `json:"version"`
	} `json:"tuning"`
	Cluster *struct {
		Workers []struct {
			ID                 string  `json:"id"`
			PID                int     `json:"pid"`
			Admin              string  `json:"admin"`
			Rate               float64 `json:"rate"`
			InFlight           int     `json:"in_flight"`
			ConcurrencyLimit   int     `json:"concurrency_limit"`
			Share              float64 `json:"share"`
			DeliveredPerSecond float64 `json:"delivered_per_second"`
			SeenAt             string  `json:"seen_at"`
		} `json:"workers"`
		InFlight           int     `json:"in_flight"`
		ConcurrencyLimit   int     `json:"concurrency_limit"`
		DeliveredPerSecond float64 `json:"delivered_per_second"`
		DrainPerSecond     float64 `json:"drain_per_second"`
	} `json:"cluster"`
}

func viewOf(t *testing.T, admin string) backendView {
	t.Helper()
	resp, body := do(t, "GET", admin+"/admin/backends/b", "", nil)
	var v backendView
	if resp.StatusCode != 200 || json.Unmarshal(body, &v) != nil {
		t.Fatalf("GET %s/admin/backends/b: %d %s", admin, resp.StatusCode, body)
	}
	return v
}

// untilAll polls every admin address until each one's view satisfies ok,
// and returns how long that took from start; it fails t after bound.
func untilAll(t *testing.T, start time.Time, bound time.Duration, what string, ok func(backendView) bool, admins ...string) time.Duration {
	t.Helper()
	left := slices.Clone(admins)
	for len(left) > 0 {
		if time.Since(start) > bound {
			t.Fatalf("%s: not on %v within %v", what, left, bound)
		}
		left = slices.DeleteFunc(left, func(a string) bool { return ok(viewOf(t, a)) })
		if len(left) > 0 {
			time.Sleep(5 * time.Millisecond)
		}
	}
	return time.Since(start)
}

// paced submits to base/r every, until stop closes.
func paced(base string, every time.Duration, stop <-chan struct{}) <-chan int {
	n := make(chan int, 1)
	go func() {
		c := &http.Client{Timeout: 5 * time.Second}
		tk := time.NewTicker(every)
		defer tk.Stop()
		sent := 0
		for {
			select {
			case <-stop:
				n <- sent
				return
			case <-tk.C:
			}
			resp, err := c.Post(base+"/r", "application/json", strings.NewReader(`{"paced":true}`))
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == 202 {
					sent++
				}
			}
		}
	}()
	return n
}

// TestClusterWideTuning: roles split over processes on RabbitMQ and on
// Kafka with Redis — one ingress,collector process and two workers. A PATCH on the
// ingress process's admin port reaches both workers within 1 s; a worker
// restarted comes up with it; the ingress process's /admin/backends lists
// both workers with their in-flight and a delivered rate whose total is
// their sum and the rate; a worker's drain rate is the cluster's, not its
// own acknowledgements; DELETE .../tuning takes both back to the config.
func TestClusterWideTuning(t *testing.T) {
	integration(t)
	if testing.Short() {
		t.Skip("multi-process test")
	}
	eachBroker(t, []string{"rabbitmq", "kafka"}, []string{"b"}, func(t *testing.T, _, brokerCfg, prefix string) {
		clusterWideTuning(t, brokerCfg, prefix)
	})
}

func clusterWideTuning(t *testing.T, brokerCfg, prefix string) {
	be := newBackend(t, func(hit, int) (int, map[string]string, string) {
		time.Sleep(150 * time.Millisecond) // a few deliveries in flight at any time
		return 200, nil, "ok"
	})
	cfg := splitConfig(t, t.TempDir(), brokerCfg, prefix, be.URL, "    rate: 40\n    burst: 1\n    concurrency: 8\n")
	front := startRoles(t, cfg, "ingress,collector")
	w1 := startRoles(t, cfg, "worker")
	w2 := startRoles(t, cfg, "worker")

	// A backlog, then a steady stream about as fast as the tuned rate, so
	// the queue's depth stays put while the workers drain it.
	if ids := submitStream(front.base, 200, nil, nil); len(ids) != 200 {
		t.Fatalf("%d of 200 accepted", len(ids))
	}
	stop := make(chan struct{})
	sent := paced(front.base, 50*time.Millisecond, stop) // 20/s
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
	}()
	// Each worker takes its part of the backend: half on RabbitMQ, its
	// partitions' part on Kafka (2 and 1 of 3).
	wait.For(t, 30*time.Second, "both workers delivering, each with its share", func() bool {
		a, b := viewOf(t, w1.admin), viewOf(t, w2.admin)
		return a.Stats.Share > 0 && a.Stats.Share < 1 && b.Stats.Share > 0 && b.Stats.Share < 1 &&
			math.Abs(a.Stats.Share+b.Stats.Share-1) < 0.01 && be.count() > 20
	})

	// PATCH on the ingress process; both workers apply it.
	start := time.Now()
	resp, body := do(t, "PATCH", front.admin+"/admin/backends/b", `{"rate":20}`, nil)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"rate":20,`) || !strings.Contains(string(body), `"tuning":{"rate":20,"version":1,`) {
		t.Fatalf("PATCH on the ingress process: %d %s", resp.StatusCode, body)
	}
	took := untilAll(t, start, 5*time.Second, "rate 20 after the PATCH", func(v backendView) bool {
		return v.Rate == 20 && v.Tuning != nil && v.Tuning.Version == 1
	}, w1.admin, w2.admin)
	t.Logf("PATCH on the ingress process applied by both workers %v after it was sent", took)
	if took > time.Second {
		t.Fatalf("the PATCH took %v to reach both workers, want within 1 s", took)
	}

	// The ingress process shows both workers and their total.
	var pids []int
	for _, p := range []*proc{w1, w2} {
		pids = append(pids, p.cmd.Process.Pid)
	}
	clusterOK := func(want []int) func() bool {
		return func() bool {
			v := viewOf(t, front.admin)
			c := v.Cluster
			if c == nil || len(c.Workers) != len(want) {
				return false
			}
			sumRate, sumInFlight := 0.0, 0
			for _, w := range c.Workers {
				if !slices.Contains(want, w.PID) || w.Rate != 20 || w.Share <= 0 || w.Share >= 1 || w.SeenAt == "" || w.Admin == "" {
					return false
				}
				sumRate += w.DeliveredPerSecond
				sumInFlight += w.InFlight
			}
			return math.Abs(sumRate-c.DeliveredPerSecond) < 0.05 && sumInFlight == c.InFlight
		}
	}
	wait.For(t, 5*time.Second, "both workers in the ingress process's cluster figures, their sums the totals", clusterOK(pids))
	// Over 4 s, the total delivered rate reads the tuned rate, as the
	// backend counts it; in-flight shows deliveries under way.
	time.Sleep(2 * time.Second) // deliveries at the old rate out of the workers' last second
	var totals []float64
	maxInFlight := 0
	n0, t0 := be.count(), time.Now()
	for range 8 {
		time.Sleep(500 * time.Millisecond)
		c := viewOf(t, front.admin).Cluster
		if c == nil {
			t.Fatal("the cluster figures went away")
		}
		totals = append(totals, c.DeliveredPerSecond)
		maxInFlight = max(maxInFlight, c.InFlight)
	}
	seen := float64(be.count()-n0) / time.Since(t0).Seconds()
	avg := 0.0
	for _, x := range totals {
		avg += x / float64(len(totals))
	}
	t.Logf("cluster delivered_per_second %.1f on average (samples %v), the backend saw %.1f/s; in flight up to %d", avg, totals, seen, maxInFlight)
	if avg < 16 || avg > 24 || seen < 16 || seen > 24 {
		t.Fatalf("delivered %.1f/s by the cluster figures, %.1f/s at the backend; want both 20 ± 4", avg, seen)
	}
	if maxInFlight == 0 {
		t.Fatal("no delivery in flight in any sample, with 150 ms deliveries at 20/s")
	}
	// Each worker acknowledges its part (RabbitMQ counts acknowledgements
	// per process; Kafka's committed offsets are the group's); its drain
	// rate is the cluster's.
	wait.For(t, 10*time.Second, "a worker's drain rate near the cluster's 20/s, not its own part", func() bool {
		return viewOf(t, w1.admin).Stats.DrainPerSecond >= 16
	})
	v1 := viewOf(t, w1.admin)
	t.Logf("worker 1: drain %.1f/s, depth %d, backlog %.1f s", v1.Stats.DrainPerSecond, v1.Stats.QueueDepth, v1.Stats.BacklogSeconds)

	// A worker that restarts comes up tuned.
	if err := w2.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-w2.exited:
		if err != nil {
			t.Fatalf("worker 2 after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("worker 2 did not stop within 20 s of SIGTERM")
	}
	w2 = startRoles(t, cfg, "worker")
	if v := viewOf(t, w2.admin); v.Rate != 20 || v.Tuning == nil || v.Tuning.Version != 1 {
		t.Fatalf("restarted worker's first answer: rate %v, tuning %+v; want the PATCHed 20", v.Rate, v.Tuning)
	}
	pids[1] = w2.cmd.Process.Pid
	wait.For(t, 10*time.Second, "the restarted worker in the cluster figures in place of the old one", clusterOK(pids))

	// DELETE on the ingress process: both workers back to the config.
	start = time.Now()
	resp, body = do(t, "DELETE", front.admin+"/admin/backends/b/tuning", "", nil)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"rate":40,`) || strings.Contains(string(body), `"tuning"`) {
		t.Fatalf("DELETE tuning: %d %s", resp.StatusCode, body)
	}
	took = untilAll(t, start, 5*time.Second, "rate 40 after the DELETE", func(v backendView) bool {
		return v.Rate == 40 && v.Tuning == nil
	}, w1.admin, w2.admin)
	t.Logf("DELETE applied by both workers %v after it was sent", took)
	if took > time.Second {
		t.Fatalf("the DELETE took %v to reach both workers, want within 1 s", took)
	}
	close(stop)
	t.Logf("%d paced submits", <-sent)
}

// TestTuningSurvivesRestart: in a single process (embedded broker and
// store) a PATCH is kept beside the result store: the process restarted on
// the same data comes up with it, and DELETE .../tuning goes back to the
// config.
func TestTuningSurvivesRestart(t *testing.T) {
	integration(t)
	be := newBackend(t, nil)
	dir := t.TempDir()
	cfg := fmt.Sprintf("routes: [{ name: r, path: /r, backend: b }]\nbackends:\n%s",
		backendCfg("b", be.URL, "    rate: 40\n    concurrency: 8\n"))
	g := startGatewayIn(t, dir, cfg)
	if resp, body := do(t, "PATCH", g.admin+"/admin/backends/b", `{"rate":7,"paused":true}`, nil); resp.StatusCode != 200 {
		t.Fatalf("PATCH: %d %s", resp.StatusCode, body)
	}
	g.stop()
	g = startGatewayIn(t, dir, cfg)
	v := viewOf(t, g.admin)
	if v.Rate != 7 || !v.Paused || v.Tuning == nil || v.Tuning.Version != 1 || *v.Tuning.Rate != 7 || !*v.Tuning.Paused {
		t.Fatalf("after the restart: rate %v, paused %v, tuning %+v; want the PATCHed 7, paused", v.Rate, v.Paused, v.Tuning)
	}
	if v.Cluster == nil || len(v.Cluster.Workers) != 1 || v.Cluster.Workers[0].Rate != 7 {
		wait.For(t, 3*time.Second, "this process in its own cluster figures", func() bool {
			c := viewOf(t, g.admin).Cluster
			return c != nil && len(c.Workers) == 1 && c.Workers[0].Rate == 7
		})
	}
	a := g.submit("/r", `{"x":1}`, nil)
	wait.Never(t, 500*time.Millisecond, "a delivery while paused by a kept PATCH", func() bool { return be.count() > 0 })
	resp, body := do(t, "DELETE", g.admin+"/admin/backends/b/tuning", "", nil)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"rate":40,`) || !strings.Contains(string(body), `"paused":false,`) {
		t.Fatalf("DELETE tuning: %d %s", resp.StatusCode, body)
	}
	if r := g.await(a.ID, 10*time.Second); r.Status != "succeeded" {
		t.Fatalf("after the DELETE: %s", r.Status)
	}
	g.stop()
	g = startGatewayIn(t, dir, cfg)
	if v := viewOf(t, g.admin); v.Rate != 40 || v.Paused || v.Tuning != nil {
		t.Fatalf("restarted after the DELETE: rate %v, paused %v, tuning %+v; want the config", v.Rate, v.Paused, v.Tuning)
	}
}
