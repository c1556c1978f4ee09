package admin

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/sluice-gw/sluice/cluster"
	"github.com/sluice-gw/sluice/internal/wait"
	"github.com/sluice-gw/sluice/workers"
)

// clusterHandler is testHandler with a cluster node on store, applying
// tunings over the config (rate 20, concurrency 8) the way the gateway
// does, and reporting this "process"'s figures; the node runs until t
// ends.
func clusterHandler(t *testing.T, store cluster.Store) *Handler {
	t.Helper()
	h, _ := testHandler(t, "")
	m := h.Backends
	base := workers.Settings{Rate: 20, Burst: 1, Concurrency: 8}
	node := cluster.New(store, cluster.Options{Backends: m.Names(), Log: zerolog.Nop(), ReportEvery: 50 * time.Millisecond,
		Apply: func(name string, tu cluster.Tuning) {
			m.Tune(name, func(s *workers.Settings) {
				*s = base
				if tu.Rate != nil {
					s.Rate = *tu.Rate
				}
				if tu.Concurrency != nil {
					s.Concurrency = *tu.Concurrency
				}
				if tu.Paused != nil {
					s.Paused = *tu.Paused
				}
			})
		},
		Local: func(name string) (cluster.Figures, bool) {
			st, ok := m.Status(name)
			return cluster.Figures{Rate: st.Rate, InFlight: 2, ConcurrencyLimit: st.Limit, Share: 1}, ok
		}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- node.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	h.Cluster = node
	return h
}

func getBackend(t *testing.T, h *Handler) Backend {
	t.Helper()
	resp, body := serve(h, "GET", "/admin/backends/logs", "", nil)
	var b Backend
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &b) != nil {
		t.Fatalf("GET: %d %s", resp.StatusCode, body)
	}
	return b
}

// TestClusterTuning: a PATCH on one process is kept as a tuning (the
// fields set, versioned), shown in the object, applied in another process
// within a second; DELETE .../tuning takes both back to the config; the
// object carries every worker's figures.
func TestClusterTuning(t *testing.T) {
	store, err := cluster.OpenFile(filepath.Join(t.TempDir(), "tuning.json"))
	if err != nil {
		t.Fatal(err)
	}
	a, b := clusterHandler(t, store), clusterHandler(t, store)

	resp, body := serve(a, "PATCH", "/admin/backends/logs", `{"rate":5}`, nil)
	var got Backend
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &got) != nil || got.Rate != 5 ||
		got.Tuning == nil || *got.Tuning.Rate != 5 || got.Tuning.Version != 1 || got.Tuning.Concurrency != nil {
		t.Fatalf("PATCH: %d %s", resp.StatusCode, body)
	}
	resp, body = serve(b, "PATCH", "/admin/backends/logs", `{"concurrency":4}`, nil)
	if resp.StatusCode != 200 || !strings.Contains(body, `"tuning":{"rate":5,"concurrency":4,"version":2,`) {
		t.Fatalf("second PATCH, on the other process: %d %s", resp.StatusCode, body)
	}
	wait.For(t, time.Second, "both PATCHes applied in both processes", func() bool {
		x, y := getBackend(t, a), getBackend(t, b)
		return x.Rate == 5 && x.Concurrency == 4 && y.Rate == 5 && y.Concurrency == 4
	})
	// An empty PATCH stores nothing.
	if _, body := serve(a, "PATCH", "/admin/backends/logs", `{}`, nil); !strings.Contains(body, `"version":2,`) {
		t.Fatalf("empty PATCH: %s", body)
	}

	wait.For(t, 2*time.Second, "both processes in the cluster figures", func() bool {
		c := getBackend(t, a).Cluster
		return c != nil && len(c.Workers) == 2 && c.InFlight == 4 && c.ConcurrencyLimit == 8
	})

	resp, body = serve(b, "DELETE", "/admin/backends/logs/tuning", "", nil)
	var reset Backend
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &reset) != nil || reset.Rate != 20 || reset.Concurrency != 8 || reset.Tuning != nil {
		t.Fatalf("DELETE: %d %s", resp.StatusCode, body)
	}
	wait.For(t, time.Second, "the other process back to the config", func() bool {
		x := getBackend(t, a)
		return x.Rate == 20 && x.Concurrency == 8 && x.Tuning == nil
	})
	if resp, body := serve(a, "DELETE", "/admin/backends/nope/tuning", "", nil); resp.StatusCode != 404 || !strings.Contains(body, "unknown backend") {
		t.Fatalf("DELETE of an unknown backend: %d %s", resp.StatusCode, body)
	}
}

// failing is a Cluster whose store is away.
type failing struct{}

func (failing) Tune(context.Context, string, cluster.Tuning) (cluster.Tuning, error) {
	return cluster.Tuning{}, errors.New("redis: connection refused")
}
func (failing) Reset(context.Context, string) error  { return errors.New("redis: connection refused") }
func (failing) Tuning(string) (cluster.Tuning, bool) { return cluster.Tuning{}, false }
func (failing) View(string) (cluster.View, bool)     { return cluster.View{}, false }

var _ Cluster = failing{}

// TestClusterTuningUnavailable: when the tuning cannot be stored for every
// process, nothing changes, not even here, and the answer says so (503)
// without the store's error.
func TestClusterTuningUnavailable(t *testing.T) {
	h, _ := testHandler(t, "")
	h.Cluster = failing{}
	for _, c := range []struct{ method, path, body string }{
		{"PATCH", "/admin/backends/logs", `{"rate":1}`},
		{"DELETE", "/admin/backends/logs/tuning", ""},
	} {
		resp, body := serve(h, c.method, c.path, c.body, nil)
		if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || strings.Contains(body, "redis") {
			t.Fatalf("%s %s: %d %s", c.method, c.path, resp.StatusCode, body)
		}
	}
	if st, _ := h.Backends.Status("logs"); st.Rate != 20 {
		t.Fatalf("rate %v after a PATCH that failed", st.Rate)
	}
}

// TestHistoryCluster: with every worker's figures, a point shows their
// in-flight, limits and rates, not this process's.
func TestHistoryCluster(t *testing.T) {
	h, _, c := testHistory(time.Minute, "a")
	h.Cluster = fakeView{"a": {InFlight: 9, ConcurrencyLimit: 16, DeliveredPerSecond: 41.5, FailedPerSecond: 1, AttemptsPerSecond: 44,
		Workers: []cluster.Figures{{Worker: "w1"}, {Worker: "w2"}}}}
	h.Sample()
	c.advance(2 * time.Second)
	h.Sample()
	p := h.Snapshot(time.Time{})[0].Points[0]
	if p.InFlight != 9 || p.Concurrency != 16 || val(p.DeliveredPerSecond) != 41.5 || val(p.FailedPerSecond) != 1.0 ||
		val(p.AttemptsPerSecond) != 44.0 || val(p.RetriedPerSecond) != 0.0 {
		t.Fatalf("first point with cluster figures: %+v", p)
	}
}

type fakeView map[string]cluster.View

func (f fakeView) View(name string) (cluster.View, bool) { v, ok := f[name]; return v, ok }
