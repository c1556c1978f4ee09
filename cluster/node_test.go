package cluster

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/sluice-gw/sluice/internal/wait"
)

// applied records what a Node gave Options.Apply.
type applied struct {
	mu  sync.Mutex
	got map[string][]Tuning
}

func (a *applied) apply(backend string, t Tuning) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.got == nil {
		a.got = map[string][]Tuning{}
	}
	a.got[backend] = append(a.got[backend], t)
}

func (a *applied) last(backend string) (Tuning, int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	l := a.got[backend]
	if len(l) == 0 {
		return Tuning{}, 0
	}
	return l[len(l)-1], len(l)
}

func openFile(t *testing.T) *File {
	t.Helper()
	f, err := OpenFile(filepath.Join(t.TempDir(), "tuning.json"))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func running(t *testing.T, n *Node) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("Node.Run did not return within 5 s")
		}
	})
}

// TestNodeRestoreAndPropagate: a tune on one node is applied there at
// once and on another node within a second; a node that starts later
// restores it before anything runs; a reset takes every node back to the
// config; nodes apply only what changed.
func TestNodeRestoreAndPropagate(t *testing.T) {
	store := openFile(t)
	ctx := context.Background()
	var a1, a2 applied
	n1 := New(store, Options{Backends: []string{"b", "c"}, Apply: a1.apply, Log: zerolog.Nop()})
	n2 := New(store, Options{Backends: []string{"b", "c"}, Apply: a2.apply, Log: zerolog.Nop()})
	if err := n1.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	if _, n := a1.last("b"); n != 0 {
		t.Fatal("nothing stored, yet Apply was called")
	}
	running(t, n1)
	running(t, n2)

	rate := 5.0
	got, err := n1.Tune(ctx, "b", Tuning{Rate: &rate})
	if err != nil || got.Version != 1 || *got.Rate != 5 {
		t.Fatalf("tune: %+v %v", got, err)
	}
	if last, n := a1.last("b"); n != 1 || *last.Rate != 5 {
		t.Fatalf("the tuning node applied %+v (%d calls), want rate 5 at once", last, n)
	}
	wait.For(t, time.Second, "the other node applies the tune", func() bool {
		last, _ := a2.last("b")
		return last.Rate != nil && *last.Rate == 5
	})
	if tu, ok := n2.Tuning("b"); !ok || *tu.Rate != 5 {
		t.Fatalf("n2.Tuning(b) = %+v %v", tu, ok)
	}
	if _, ok := n2.Tuning("c"); ok {
		t.Fatal("c has no tuning")
	}

	// A node that starts now comes up tuned.
	var a3 applied
	n3 := New(store, Options{Backends: []string{"b", "c"}, Apply: a3.apply, Log: zerolog.Nop()})
	if err := n3.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	if last, n := a3.last("b"); n != 1 || *last.Rate != 5 {
		t.Fatalf("restored %+v (%d calls)", last, n)
	}
	if _, n := a3.last("c"); n != 0 {
		t.Fatal("c restored without a tuning")
	}
	// Reading the same tuning again applies nothing.
	if err := n3.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	if _, n := a3.last("b"); n != 1 {
		t.Fatalf("%d applies after a second read of the same tuning", n)
	}

	if err := n2.Reset(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	wait.For(t, time.Second, "every node back to the config", func() bool {
		l1, _ := a1.last("b")
		l2, _ := a2.last("b")
		return l1.Empty() && l2.Empty()
	})
	if _, ok := n1.Tuning("b"); ok {
		t.Fatal("n1 still reports a tuning after the reset")
	}
	if _, err := n1.Tune(ctx, "nope", Tuning{Rate: &rate}); !errors.Is(err, ErrUnknownBackend) {
		t.Fatalf("unknown backend: %v", err)
	}
}

// deaf is a Store whose announcements never arrive.
type deaf struct{ *File }

func (deaf) Listen(ctx context.Context, _ func(string)) { <-ctx.Done() }

// TestNodeReloadsWithoutAnnouncements: a lost announcement delays a tune
// by at most ReloadEvery.
func TestNodeReloadsWithoutAnnouncements(t *testing.T) {
	store := deaf{openFile(t)}
	var a applied
	n := New(store, Options{Backends: []string{"b"}, Apply: a.apply, ReloadEvery: 200 * time.Millisecond, Log: zerolog.Nop()})
	running(t, n)
	c := 3
	if _, err := store.Tune(context.Background(), "b", Tuning{Concurrency: &c}); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 2*time.Second, "the tune applied by the periodic read", func() bool {
		last, _ := a.last("b")
		return last.Concurrency != nil && *last.Concurrency == 3
	})
}

// TestNodeFigures: a worker node reports its counts with rates; every
// node's View lists each worker and their sums; a stopped worker leaves.
func TestNodeFigures(t *testing.T) {
	store := openFile(t)
	var delivered atomic.Int64
	local := func(inFlight int) func(string) (Figures, bool) {
		return func(b string) (Figures, bool) {
			if b != "b" {
				return Figures{}, false
			}
			return Figures{Rate: 10, InFlight: inFlight, ConcurrencyLimit: 4, Share: 0.5,
				Succeeded: delivered.Load(), Attempts: delivered.Load()}, true
		}
	}
	every := 100 * time.Millisecond
	w1 := New(store, Options{Backends: []string{"b"}, Local: local(2), Admin: "127.0.0.1:1", ReportEvery: every, Log: zerolog.Nop()})
	w2 := New(store, Options{Backends: []string{"b"}, Local: local(3), ReportEvery: every, Log: zerolog.Nop()})
	front := New(store, Options{Backends: []string{"b"}, ReportEvery: every, Log: zerolog.Nop()})
	running(t, w1)
	ctx2, stop2 := context.WithCancel(context.Background())
	done2 := make(chan error, 1)
	go func() { done2 <- w2.Run(ctx2) }()
	running(t, front)
	if w1.ID() == w2.ID() {
		t.Fatalf("two nodes share the id %s", w1.ID())
	}
	stopCount := make(chan struct{})
	go func() { // 50 deliveries a second, counted by both workers
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stopCount:
				return
			case <-tk.C:
				delivered.Add(1)
			}
		}
	}()
	defer close(stopCount)
	var v View
	wait.For(t, 5*time.Second, "both workers in the front's view, delivering", func() bool {
		var ok bool
		v, ok = front.View("b")
		return ok && len(v.Workers) == 2 && v.Workers[0].DeliveredPerSecond > 0 && v.Workers[1].DeliveredPerSecond > 0
	})
	if v.InFlight != 5 || v.ConcurrencyLimit != 8 {
		t.Fatalf("sums: in flight %d, limit %d; want 5 and 8", v.InFlight, v.ConcurrencyLimit)
	}
	if d := v.DeliveredPerSecond - (v.Workers[0].DeliveredPerSecond + v.Workers[1].DeliveredPerSecond); d > 0.02 || d < -0.02 {
		t.Fatalf("total %v is not the sum of %+v", v.DeliveredPerSecond, v.Workers)
	}
	if v.DrainPerSecond != v.DeliveredPerSecond {
		t.Fatalf("drain %v, delivered %v: only successes were counted", v.DrainPerSecond, v.DeliveredPerSecond)
	}
	for _, f := range v.Workers {
		if f.PID == 0 || f.Host == "" || f.SeenAt.IsZero() || f.Rate != 10 || f.Share != 0.5 {
			t.Fatalf("worker figures %+v", f)
		}
		if f.Worker == w1.ID() && f.Admin != "127.0.0.1:1" {
			t.Fatalf("w1 figures without its admin address: %+v", f)
		}
	}
	if _, ok := front.View("nope"); ok {
		t.Fatal("a view of an unknown backend")
	}
	stop2()
	<-done2
	wait.For(t, 2*time.Second, "w2 gone from the view once stopped", func() bool {
		v, ok := front.View("b")
		return ok && len(v.Workers) == 1 && v.Workers[0].Worker == w1.ID()
	})
}
