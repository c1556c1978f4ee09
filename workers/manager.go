package workers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/config"
)

// ErrUnknownBackend reports a backend name that is not configured.
var ErrUnknownBackend = errors.New("unknown backend")

// Manager runs the pools of all backends and reports and tunes them.
type Manager struct {
	pools map[string]*Pool
	names []string
}

// NewManager builds one pool per configured backend. With metrics: false
// the pools record no attempt durations.
func NewManager(cfg *config.Config, br broker.Broker, log zerolog.Logger) *Manager {
	m := &Manager{pools: map[string]*Pool{}}
	drain := cfg.ShutdownTimeout.D() * 3 / 4
	for _, b := range cfg.Backends {
		m.pools[b.Name] = NewPool(b, br, log, drain)
		if !cfg.MetricsOn() {
			m.pools[b.Name].latency = nil
		}
		m.names = append(m.names, b.Name)
	}
	return m
}

// SkipSettled makes every pool skip the requests settled already when a
// batch is handed out again (after a crash). Call it before Run.
func (m *Manager) SkipSettled(settled Settled) {
	for _, p := range m.pools {
		p.settled = settled
	}
}

// LearnPacking makes every pool report how many requests each message it
// fetches carries (backlog.Monitor.Packed). Call it before Run.
func (m *Manager) LearnPacking(packed func(topic string, requests int)) {
	for _, p := range m.pools {
		p.packed = packed
	}
}

// Names lists the backends in config order.
func (m *Manager) Names() []string { return slices.Clone(m.names) }

// Status is one backend's settings, limiter state and counts in this
// process.
type Status struct {
	Settings
	State
	Attempts, Succeeded, Failed, Retried, DeadLettered int64
	// Latency is how long attempts took since the pool started
	// (LatencyQuantile reads it); empty with metrics: false.
	Latency Latency
}

// Status reports backend name; false if it is not configured.
func (m *Manager) Status(name string) (Status, bool) {
	p := m.pools[name]
	if p == nil {
		return Status{}, false
	}
	c := &p.Counter
	st := Status{Settings: p.lim.Settings(), State: p.lim.State(),
		Attempts: c.Attempts.Load(), Succeeded: c.Succeeded.Load(), Failed: c.Failed.Load(),
		Retried: c.Retried.Load(), DeadLettered: c.DeadLettered.Load()}
	st.InFlight = int(c.InFlight.Load())
	st.Latency = p.latency.snapshot()
	return st, true
}

// Tune changes backend name's settings with change, effective at once;
// false if it is not configured.
func (m *Manager) Tune(name string, change func(*Settings)) bool {
	p := m.pools[name]
	if p == nil {
		return false
	}
	s := p.lim.Settings()
	change(&s)
	p.lim.Set(s)
	return true
}

// StopBy bounds the stop of every pool (Pool.StopBy).
func (m *Manager) StopBy(drain, hard time.Time) {
	for _, p := range m.pools {
		p.StopBy(drain, hard)
	}
}

// Run runs every pool until ctx ends and they have drained.
func (m *Manager) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	errs := make(chan error, len(m.pools))
	for _, p := range m.pools {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.Run(ctx); err != nil {
				errs <- fmt.Errorf("backend %s: %w", p.Name(), err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}
