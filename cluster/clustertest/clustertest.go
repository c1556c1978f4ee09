// Package clustertest is the conformance suite every cluster.Store passes:
// tunings merged field by field and versioned, concurrent tunes losing
// nothing, announcements heard by a listener on another handle, figures
// that expire unless reported again, and a clean leave.
package clustertest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/cluster"
	"github.com/sluice-gw/sluice/internal/wait"
)

// Factory opens a new, empty store and returns two handles on it, as two
// processes sharing it would hold (a kind with one handle per store
// returns the same twice). It closes them at t's cleanup.
type Factory func(t *testing.T) (a, b cluster.Store)

// Run runs the suite, its cases in parallel, each on a store of its own.
func Run(t *testing.T, open Factory) {
	run := func(name string, f func(t *testing.T, a, b cluster.Store)) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			a, b := open(t)
			f(t, a, b)
		})
	}
	run("TuneMergesAndVersions", testTuneMerges)
	run("Reset", testReset)
	run("ConcurrentTunesLoseNothing", testConcurrentTunes)
	run("ListenHearsOtherHandle", testListen)
	run("FiguresExpire", testFiguresExpire)
	run("Leave", testLeave)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func f64(v float64) *float64 { return &v }
func i(v int) *int           { return &v }
func b(v bool) *bool         { return &v }

func testTuneMerges(t *testing.T, a, bb cluster.Store) {
	ctx := ctxT(t)
	if got, err := bb.Tunings(ctx, []string{"x", "y"}); err != nil || len(got) != 0 {
		t.Fatalf("new store: %v %v, want none", got, err)
	}
	before := time.Now().Add(-time.Second)
	t1, err := a.Tune(ctx, "x", cluster.Tuning{Rate: f64(12.5)})
	if err != nil {
		t.Fatal(err)
	}
	if t1.Version != 1 || t1.Rate == nil || *t1.Rate != 12.5 || t1.Concurrency != nil || t1.UpdatedAt.Before(before) {
		t.Fatalf("first tune: %+v", t1)
	}
	t2, err := bb.Tune(ctx, "x", cluster.Tuning{Concurrency: i(4), Paused: b(true)})
	if err != nil {
		t.Fatal(err)
	}
	if t2.Version != 2 || *t2.Rate != 12.5 || *t2.Concurrency != 4 || !*t2.Paused || t2.Burst != nil || t2.Adaptive != nil {
		t.Fatalf("second tune keeps the first's rate: %+v", t2)
	}
	t3, err := a.Tune(ctx, "x", cluster.Tuning{Rate: f64(0), Adaptive: b(false), Burst: i(3)})
	if err != nil {
		t.Fatal(err)
	}
	got, err := bb.Tunings(ctx, []string{"x", "y"})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := got["y"]; ok || !got["x"].Equal(t3) {
		t.Fatalf("read back %+v, want x = %+v only", got, t3)
	}
	x := got["x"]
	if x.Version != 3 || *x.Rate != 0 || *x.Burst != 3 || *x.Adaptive || *x.Concurrency != 4 || !*x.Paused {
		t.Fatalf("after three tunes: %+v", x)
	}
}

func testReset(t *testing.T, a, bb cluster.Store) {
	ctx := ctxT(t)
	if err := a.Reset(ctx, "x"); err != nil {
		t.Fatalf("reset without a tuning: %v", err)
	}
	if _, err := a.Tune(ctx, "x", cluster.Tuning{Rate: f64(1)}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Tune(ctx, "z", cluster.Tuning{Rate: f64(2)}); err != nil {
		t.Fatal(err)
	}
	if err := bb.Reset(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	got, err := a.Tunings(ctx, []string{"x", "z"})
	if err != nil || len(got) != 1 || *got["z"].Rate != 2 {
		t.Fatalf("after reset of x: %+v %v, want z alone", got, err)
	}
	again, err := a.Tune(ctx, "x", cluster.Tuning{Burst: i(5)})
	if err != nil || again.Rate != nil || *again.Burst != 5 {
		t.Fatalf("a tune after the reset starts from nothing: %+v %v", again, err)
	}
}

func testConcurrentTunes(t *testing.T, a, bb cluster.Store) {
	ctx := ctxT(t)
	const n = 20
	var wg sync.WaitGroup
	for k := range n {
		s := a
		if k%2 == 1 {
			s = bb
		}
		wg.Go(func() {
			var tu cluster.Tuning
			switch k % 4 {
			case 0:
				tu.Rate = f64(float64(k))
			case 1:
				tu.Burst = i(k + 1)
			case 2:
				tu.Concurrency = i(k + 1)
			case 3:
				tu.Paused = b(true)
			}
			if _, err := s.Tune(ctx, "x", tu); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	got, err := a.Tunings(ctx, []string{"x"})
	if err != nil {
		t.Fatal(err)
	}
	x := got["x"]
	if x.Version != n || x.Rate == nil || x.Burst == nil || x.Concurrency == nil || x.Paused == nil {
		t.Fatalf("after %d concurrent tunes: %+v", n, x)
	}
}

func testListen(t *testing.T, a, bb cluster.Store) {
	ctx, cancel := context.WithCancel(ctxT(t))
	var mu sync.Mutex
	var heard []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		bb.Listen(ctx, func(backend string) {
			mu.Lock()
			heard = append(heard, backend)
			mu.Unlock()
		})
	}()
	has := func(want string) func() bool {
		return func() bool {
			mu.Lock()
			defer mu.Unlock()
			return slices.Contains(heard, want)
		}
	}
	wait.For(t, 5*time.Second, "the listener ready (\"\")", has(""))
	start := time.Now()
	if _, err := a.Tune(ctx, "x", cluster.Tuning{Rate: f64(3)}); err != nil {
		t.Fatal(err)
	}
	wait.For(t, time.Second, "x's tune heard", has("x"))
	t.Logf("a tune heard by another handle's listener in %v", time.Since(start))
	if err := a.Reset(ctx, "y"); err != nil {
		t.Fatal(err)
	}
	wait.For(t, time.Second, "y's reset heard", has("y"))
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Listen did not return within 5 s of its context's end")
	}
}

func fig(worker string, inFlight int) cluster.Figures {
	return cluster.Figures{Worker: worker, Host: "h", PID: 1, InFlight: inFlight, ConcurrencyLimit: 4, Share: 0.5,
		DeliveredPerSecond: 2.5, SeenAt: time.Now().UTC().Truncate(time.Millisecond)}
}

func workers(t *testing.T, s cluster.Store, backend string) map[string]cluster.Figures {
	t.Helper()
	got, err := s.Figures(ctxT(t), []string{backend})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]cluster.Figures{}
	for _, f := range got[backend] {
		out[f.Worker] = f
	}
	return out
}

func testFiguresExpire(t *testing.T, a, bb cluster.Store) {
	ctx := ctxT(t)
	if err := a.Report(ctx, map[string]cluster.Figures{"x": fig("w1", 3), "y": fig("w1", 1)}, 500*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	w2 := fig("w2", 2)
	if err := bb.Report(ctx, map[string]cluster.Figures{"x": w2}, time.Minute); err != nil {
		t.Fatal(err)
	}
	got := workers(t, a, "x")
	if len(got) != 2 || got["w1"].InFlight != 3 || got["w2"].InFlight != 2 || got["w1"].DeliveredPerSecond != 2.5 ||
		got["w2"].Share != 0.5 || got["w2"].ConcurrencyLimit != 4 || !got["w2"].SeenAt.Equal(w2.SeenAt) {
		t.Fatalf("x's figures: %+v", got)
	}
	if y := workers(t, bb, "y"); len(y) != 1 || y["w1"].InFlight != 1 {
		t.Fatalf("y's figures: %+v", y)
	}
	wait.For(t, 5*time.Second, "w1's figures expired", func() bool {
		got := workers(t, bb, "x")
		return len(got) == 1 && got["w2"].Worker == "w2"
	})
	// Reported again, a worker is back.
	if err := a.Report(ctx, map[string]cluster.Figures{"x": fig("w1", 7)}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if got := workers(t, bb, "x"); len(got) != 2 || got["w1"].InFlight != 7 {
		t.Fatalf("reported again: %+v", got)
	}
}

func testLeave(t *testing.T, a, bb cluster.Store) {
	ctx := ctxT(t)
	for k := range 3 {
		w := fmt.Sprintf("w%d", k)
		if err := a.Report(ctx, map[string]cluster.Figures{"x": fig(w, k), "y": fig(w, k)}, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if err := bb.Leave(ctx, "w1", []string{"x", "y"}); err != nil {
		t.Fatal(err)
	}
	for _, backend := range []string{"x", "y"} {
		got := workers(t, a, backend)
		if _, ok := got["w1"]; ok || len(got) != 2 {
			t.Fatalf("%s after w1 left: %+v", backend, got)
		}
	}
}
