package workers

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/config"
	"github.com/sluice-gw/sluice/job"
)

// ErrUnknownBackend reports a backend name that is not configured.
var ErrUnknownBackend = fmt.Errorf("unknown backend")

// Manager runs the pools of all backends and replays dead letters.
type Manager struct {
	pools  map[string]*Pool
	names  []string
	broker broker.Broker
}

// NewManager builds one pool per configured backend.
func NewManager(cfg *config.Config, br broker.Broker, log zerolog.Logger) *Manager {
	m := &Manager{pools: map[string]*Pool{}, broker: br}
	drain := cfg.ShutdownTimeout.D() * 3 / 4
	for _, b := range cfg.Backends {
		m.pools[b.Name] = NewPool(b, br, log, drain)
		m.names = append(m.names, b.Name)
	}
	return m
}

// Names lists the backends in config order.
func (m *Manager) Names() []string { return slices.Clone(m.names) }

// Pool returns the pool of backend name, or nil.
func (m *Manager) Pool(name string) *Pool { return m.pools[name] }

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

// DeadLetter is one dead-lettered request as the admin API lists it.
type DeadLetter struct {
	ID             string    `json:"id"`
	Backend        string    `json:"backend"`
	Route          string    `json:"route"`
	Attempts       int       `json:"attempts"`
	LastError      string    `json:"last_error"`
	DeadLetteredAt time.Time `json:"dead_lettered_at"`
}

// deadByID reads every dead letter of backend and groups them by request
// id, oldest id first. An id can sit there more than once: a replay that
// failed again before its old copy was taken, or a crash between a dead
// letter's write and the acknowledgement of the message it came from.
type deadEntry struct {
	req *job.Request // the copy of the highest generation
	pos []string     // every copy's position
}

func (m *Manager) deadByID(ctx context.Context, backend string) ([]*deadEntry, error) {
	if m.pools[backend] == nil {
		return nil, ErrUnknownBackend
	}
	list, err := m.broker.ListDead(ctx, broker.DeadLetterTopic(backend), 0)
	if err != nil {
		return nil, err
	}
	byID := map[string]*deadEntry{}
	var out []*deadEntry
	for _, d := range list {
		r, err := job.DecodeRequest(d.Message)
		if err != nil {
			continue
		}
		e := byID[r.ID]
		if e == nil {
			e = &deadEntry{req: r}
			byID[r.ID] = e
			out = append(out, e)
		} else if r.Gen > e.req.Gen {
			e.req = r
		}
		e.pos = append(e.pos, d.Pos)
	}
	return out, nil
}

// ErrDeliveryLimit is the last error of a request the broker moved to the
// dead-letter queue by itself: it was handed back more often than the
// queue's delivery limit (RabbitMQ's x-delivery-limit), say by a crash loop.
const ErrDeliveryLimit = "delivery limit reached"

// DeadLetters lists up to limit dead letters of backend, oldest first, each
// request id once. A request the broker dead-lettered by itself (it carries
// no dead-letter time) is recorded as failed on the way, so its poll stops
// saying it is pending.
func (m *Manager) DeadLetters(ctx context.Context, backend string, limit int) ([]DeadLetter, error) {
	entries, err := m.deadByID(ctx, backend)
	if err != nil {
		return nil, err
	}
	out := make([]DeadLetter, 0, min(len(entries), limit))
	for _, e := range entries {
		if limit > 0 && len(out) >= limit {
			break
		}
		r := e.req
		if r.DeadAt.IsZero() {
			ev := job.EventFor(r, job.Failed, r.Attempts+1) // the attempt it died in
			ev.LastError, ev.DeadLettered = ErrDeliveryLimit, true
			_ = m.broker.Publish(ctx, broker.ResultTopic, ev.Message()) // idempotent; next listing tries again
			r.LastError = ErrDeliveryLimit
		}
		out = append(out, DeadLetter{ID: r.ID, Backend: backend, Route: r.Route, Attempts: r.Attempts,
			LastError: r.LastError, DeadLetteredAt: r.DeadAt})
	}
	return out, nil
}

// Replay moves dead letters of backend (those with ids, or all) back to its
// request topic with fresh attempts and a new generation, so they keep their
// id and pass the backend's limiter like any delivery. Each is republished
// before exactly the copies that were listed are taken out of the
// dead-letter topic: a crash in between delivers it twice, never loses it,
// and a replayed request that fails again before the take keeps its new
// dead letter.
//
// It returns the queued events it published, which a caller with the result
// store may apply at once so polls show the reset without waiting for the
// collector.
func (m *Manager) Replay(ctx context.Context, backend string, ids []string) ([]*job.Event, error) {
	entries, err := m.deadByID(ctx, backend)
	if err != nil {
		return nil, err
	}
	var taken []string
	var events []*job.Event
	var perr error
	for _, e := range entries {
		if len(ids) > 0 && !slices.Contains(ids, e.req.ID) {
			continue
		}
		r := *e.req
		r.Attempts, r.LastError, r.DeadAt = 0, "", time.Time{}
		r.Gen++
		ev := job.EventFor(&r, job.Queued, 0)
		if perr = m.broker.Publish(ctx, broker.ResultTopic, ev.Message()); perr != nil {
			break
		}
		if perr = m.broker.Publish(ctx, broker.RequestTopic(backend), r.Message()); perr != nil {
			break
		}
		taken = append(taken, e.pos...)
		events = append(events, ev)
	}
	if len(taken) > 0 {
		if err := m.broker.TakeDead(ctx, broker.DeadLetterTopic(backend), taken); err != nil {
			return events, err
		}
	}
	return events, perr
}
