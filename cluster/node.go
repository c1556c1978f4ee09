package cluster

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// The Node's defaults (Options zero values).
const (
	// DefaultReportEvery is how often a worker process reports its figures
	// and every process reads the others'.
	DefaultReportEvery = time.Second
	// DefaultFiguresTTL is how long a worker's figures count after its
	// last report: a worker that died drops out of the View by then.
	DefaultFiguresTTL = 5 * time.Second
	// DefaultReloadEvery is how often every stored tuning is read again, in
	// case an announcement was lost.
	DefaultReloadEvery = 5 * time.Second
	// callTimeout bounds one call to the Store.
	callTimeout = 2 * time.Second
)

// Options configure a Node.
type Options struct {
	Backends []string
	// Apply sets backend's settings in this process to its config with the
	// fields t sets over it; an empty t means the config alone. The Node
	// calls it for one change at a time, and only when the tuning differs
	// from the one it applied last.
	Apply func(backend string, t Tuning)
	// Local reads this process's figures of backend (limits and counts;
	// the Node fills in who it is, the rates and the time). Nil in a
	// process without the worker role: it reports nothing.
	Local func(backend string) (Figures, bool)
	// Admin is this process's admin address, reported with its figures.
	Admin string
	Log   zerolog.Logger

	ReportEvery, FiguresTTL, ReloadEvery time.Duration // zero: the defaults
}

// Node is this process's part of the cluster: it applies the stored
// tunings, takes PATCHes (Tune, Reset) for every process, reports this
// process's figures and keeps the View of every worker's. New starts
// nothing; Restore applies the stored tunings once (before the workers
// start); Run listens, reports and reads until its ctx ends.
type Node struct {
	store Store
	opts  Options
	id    Figures // identity only
	now   func() time.Time

	tuneMu sync.Mutex // one read-and-apply at a time, so an older read never lands after a newer

	mu       sync.Mutex
	applied  map[string]Tuning // what Apply was last given; absent = the config
	views    map[string]View
	readAt   time.Time // the last read of the figures that succeeded
	prev     map[string]Figures
	prevAt   time.Time
	warnedAt time.Time
}

// New builds a node on store for opts.Backends. It starts nothing.
func New(store Store, opts Options) *Node {
	if opts.ReportEvery <= 0 {
		opts.ReportEvery = DefaultReportEvery
	}
	if opts.FiguresTTL <= 0 {
		opts.FiguresTTL = DefaultFiguresTTL
	}
	if opts.ReloadEvery <= 0 {
		opts.ReloadEvery = DefaultReloadEvery
	}
	host, _ := os.Hostname()
	var r [3]byte
	_, _ = rand.Read(r[:])
	pid := os.Getpid()
	return &Node{store: store, opts: opts, now: time.Now,
		id:      Figures{Worker: fmt.Sprintf("%s:%d:%s", host, pid, hex.EncodeToString(r[:])), Host: host, PID: pid, Admin: opts.Admin},
		applied: map[string]Tuning{}, views: map[string]View{}, prev: map[string]Figures{}}
}

// ID is this process's worker id in the figures.
func (n *Node) ID() string { return n.id.Worker }

// Restore reads and applies every stored tuning once. The gateway calls it
// before the workers start, so a restarted worker never delivers at the
// config's settings first; an error leaves the config in force until Run
// reads the tunings.
func (n *Node) Restore(ctx context.Context) error {
	return n.reload(ctx, n.opts.Backends)
}

// Run listens for tuning changes, reads every tuning again each
// ReloadEvery, and each ReportEvery reports this process's figures (with
// a worker role) and reads everyone's, until ctx ends; then it withdraws
// its figures. It always returns nil: a Store that fails is retried.
func (n *Node) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() {
		n.store.Listen(ctx, func(backend string) {
			names := []string{backend}
			if backend == "" {
				names = n.opts.Backends
			} else if !slices.Contains(n.opts.Backends, backend) {
				return // a backend this process's config does not have
			}
			_ = n.reload(ctx, names)
		})
	})
	defer wg.Wait()
	report := time.NewTicker(n.opts.ReportEvery)
	defer report.Stop()
	reload := time.NewTicker(n.opts.ReloadEvery)
	defer reload.Stop()
	n.report(ctx)
	n.read(ctx)
	for {
		select {
		case <-ctx.Done():
			n.leave()
			return nil
		case <-reload.C:
			_ = n.reload(ctx, n.opts.Backends)
		case <-report.C:
			n.report(ctx)
			n.read(ctx)
		}
	}
}

// Tune stores the fields t sets for backend, for every process, and
// applies the result here at once; the others apply it when they hear of
// it (or, announcement lost, within ReloadEvery). It returns the tuning
// now in force. A Store that fails changes nothing anywhere.
func (n *Node) Tune(ctx context.Context, backend string, t Tuning) (Tuning, error) {
	if !slices.Contains(n.opts.Backends, backend) {
		return Tuning{}, ErrUnknownBackend
	}
	n.tuneMu.Lock()
	defer n.tuneMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	got, err := n.store.Tune(ctx, backend, t)
	if err != nil {
		return Tuning{}, fmt.Errorf("tune %s: %w", backend, err)
	}
	n.apply(backend, got)
	return got, nil
}

// Reset drops backend's tuning for every process: each goes back to the
// config.
func (n *Node) Reset(ctx context.Context, backend string) error {
	if !slices.Contains(n.opts.Backends, backend) {
		return ErrUnknownBackend
	}
	n.tuneMu.Lock()
	defer n.tuneMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	if err := n.store.Reset(ctx, backend); err != nil {
		return fmt.Errorf("reset %s: %w", backend, err)
	}
	n.apply(backend, Tuning{})
	return nil
}

// Tuning is the tuning of backend in force in this process; false when
// it follows the config alone.
func (n *Node) Tuning(backend string) (Tuning, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	t, ok := n.applied[backend]
	return t, ok && !t.Empty()
}

// View is every live worker's figures of backend; false when none
// reported, or the last read of them is older than FiguresTTL.
func (n *Node) View(backend string) (View, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	v, ok := n.views[backend]
	if !ok || len(v.Workers) == 0 || n.now().Sub(n.readAt) > n.opts.FiguresTTL {
		return View{}, false
	}
	v.Workers = slices.Clone(v.Workers)
	return v, true
}

// DrainPerSecond is the requests per second every worker together takes
// off backend's queue; false without live figures.
func (n *Node) DrainPerSecond(backend string) (float64, bool) {
	v, ok := n.View(backend)
	return v.DrainPerSecond, ok
}

// reload reads the tunings of backends and applies those that changed.
func (n *Node) reload(ctx context.Context, backends []string) error {
	n.tuneMu.Lock()
	defer n.tuneMu.Unlock()
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	got, err := n.store.Tunings(cctx, backends)
	if err != nil {
		if ctx.Err() == nil {
			n.warn(err, "read the backends' tunings; the ones in force stay")
		}
		return err
	}
	for _, b := range backends {
		n.apply(b, got[b])
	}
	return nil
}

// apply hands t to Options.Apply when it differs from what backend has;
// n.tuneMu is held.
func (n *Node) apply(backend string, t Tuning) {
	n.mu.Lock()
	cur := n.applied[backend] // zero: the config
	n.mu.Unlock()
	if cur.Equal(t) {
		return
	}
	if n.opts.Apply != nil {
		n.opts.Apply(backend, t)
	}
	n.mu.Lock()
	if t.Empty() {
		delete(n.applied, backend)
	} else {
		n.applied[backend] = t
	}
	n.mu.Unlock()
	ev := n.opts.Log.Info().Str("backend", backend).Int64("version", t.Version)
	if t.Empty() {
		ev.Msg("tuning dropped: the config's settings apply")
		return
	}
	if t.Rate != nil {
		ev = ev.Float64("rate", *t.Rate)
	}
	if t.Burst != nil {
		ev = ev.Int("burst", *t.Burst)
	}
	if t.Concurrency != nil {
		ev = ev.Int("concurrency", *t.Concurrency)
	}
	if t.Adaptive != nil {
		ev = ev.Bool("adaptive", *t.Adaptive)
	}
	if t.Paused != nil {
		ev = ev.Bool("paused", *t.Paused)
	}
	ev.Time("updated_at", t.UpdatedAt).Msg("tuning applied over the config (DELETE /admin/backends/<name>/tuning drops it)")
}

// report sends this process's figures with their rates since the last
// report; nothing without Options.Local.
func (n *Node) report(ctx context.Context) {
	if n.opts.Local == nil {
		return
	}
	now := n.now()
	figs := map[string]Figures{}
	n.mu.Lock()
	dt := now.Sub(n.prevAt).Seconds()
	for _, b := range n.opts.Backends {
		f, ok := n.opts.Local(b)
		if !ok {
			continue
		}
		f.Worker, f.Host, f.PID, f.Admin, f.SeenAt = n.id.Worker, n.id.Host, n.id.PID, n.id.Admin, now.UTC()
		if p, ok := n.prev[b]; ok && dt > 0 {
			per := func(prev, cur int64) float64 { return math.Round(float64(max(0, cur-prev))/dt*100) / 100 }
			f.DeliveredPerSecond = per(p.Succeeded, f.Succeeded)
			f.FailedPerSecond = per(p.Failed, f.Failed)
			f.RetriedPerSecond = per(p.Retried, f.Retried)
			f.AttemptsPerSecond = per(p.Attempts, f.Attempts)
			f.DeadLetteredPerSecond = per(p.DeadLettered, f.DeadLettered)
			f.DrainPerSecond = per(p.Succeeded+p.Failed+p.Retried, f.Succeeded+f.Failed+f.Retried)
		}
		n.prev[b] = f
		figs[b] = f
	}
	n.prevAt = now
	n.mu.Unlock()
	rctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	if err := n.store.Report(rctx, figs, n.opts.FiguresTTL); err != nil && ctx.Err() == nil {
		n.warn(err, "report this worker's figures")
	}
}

// read refreshes the View of every backend.
func (n *Node) read(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	got, err := n.store.Figures(rctx, n.opts.Backends)
	if err != nil {
		if ctx.Err() == nil {
			n.warn(err, "read the workers' figures")
		}
		return
	}
	views := make(map[string]View, len(got))
	for b, figs := range got {
		slices.SortFunc(figs, func(x, y Figures) int { return cmp.Compare(x.Worker, y.Worker) })
		v := View{Workers: figs}
		for _, f := range figs {
			v.InFlight += f.InFlight
			v.ConcurrencyLimit += f.ConcurrencyLimit
			v.DeliveredPerSecond += f.DeliveredPerSecond
			v.FailedPerSecond += f.FailedPerSecond
			v.RetriedPerSecond += f.RetriedPerSecond
			v.AttemptsPerSecond += f.AttemptsPerSecond
			v.DeadLetteredPerSecond += f.DeadLetteredPerSecond
			v.DrainPerSecond += f.DrainPerSecond
		}
		for _, r := range []*float64{&v.DeliveredPerSecond, &v.FailedPerSecond, &v.RetriedPerSecond,
			&v.AttemptsPerSecond, &v.DeadLetteredPerSecond, &v.DrainPerSecond} {
			*r = math.Round(*r*100) / 100
		}
		views[b] = v
	}
	n.mu.Lock()
	n.views, n.readAt = views, n.now()
	n.mu.Unlock()
}

// leave withdraws this process's figures at the end of Run, so the View
// does not show it until they expire.
func (n *Node) leave() {
	if n.opts.Local == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := n.store.Leave(ctx, n.id.Worker, n.opts.Backends); err != nil {
		n.opts.Log.Debug().Err(err).Msg("withdraw this worker's figures; they expire by themselves")
	}
}

// warn logs a failing Store at most every 10 s.
func (n *Node) warn(err error, what string) {
	n.mu.Lock()
	now := n.now()
	quiet := now.Sub(n.warnedAt) < 10*time.Second
	if !quiet {
		n.warnedAt = now
	}
	n.mu.Unlock()
	if !quiet {
		n.opts.Log.Warn().Err(err).Msg("cluster: " + what)
	}
}
