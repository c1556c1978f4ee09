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
	"github.com/sluice-gw/sluice/wire"
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
	req    *job.Request // the copy of the highest generation, without its body
	newest string       // that copy's position
	pos    []string     // every copy's position
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
		r, err := wire.DecodeRequest(d.Message)
		if err != nil {
			continue
		}
		e := byID[r.ID]
		if e == nil {
			e = &deadEntry{req: r, newest: d.Pos}
			byID[r.ID] = e
			out = append(out, e)
		} else if r.Gen >= e.req.Gen {
			e.req, e.newest = r, d.Pos
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
			_ = m.broker.Publish(ctx, broker.ResultTopic, wire.EncodeEvent(ev)) // idempotent; next listing tries again
			r.LastError = ErrDeliveryLimit
		}
		out = append(out, DeadLetter{ID: r.ID, Backend: backend, Route: r.Route, Attempts: r.Attempts,
			LastError: r.LastError, DeadLetteredAt: r.DeadAt})
	}
	return out, nil
}

// replayBatch is how many dead letters a replay reads (bodies included) at
// once: memory follows it, not the size of the dead-letter topic.
const replayBatch = 100

// Replay moves dead letters of backend (those with ids, or all) back to its
// request topic with fresh attempts and a new generation, so they keep their
// id and pass the backend's limiter like any delivery. Each is republished
// before exactly the copies that were listed are taken out of the
// dead-letter topic: a crash in between delivers it twice, never loses it,
// and a replayed request that fails again before the take keeps its new
// dead letter. The request is written before its queued event, so a failure
// between the two never shows a request as queued that is still dead.
//
// It returns the queued events it published, which a caller with the result
// store may apply at once so polls show the reset without waiting for the
// collector.
func (m *Manager) Replay(ctx context.Context, backend string, ids []string) ([]*job.Event, error) {
	entries, err := m.deadByID(ctx, backend)
	if err != nil {
		return nil, err
	}
	var chosen []*deadEntry
	for _, e := range entries {
		if len(ids) == 0 || slices.Contains(ids, e.req.ID) {
			chosen = append(chosen, e)
		}
	}
	topic := broker.DeadLetterTopic(backend)
	var taken []string
	var events []*job.Event
	var perr error
	for start := 0; start < len(chosen) && perr == nil; start += replayBatch {
		batch := chosen[start:min(start+replayBatch, len(chosen))]
		pos := make([]string, len(batch))
		for i, e := range batch {
			pos[i] = e.newest
		}
		read, err := m.broker.ReadDead(ctx, topic, pos)
		if err != nil {
			perr = err
			break
		}
		byPos := make(map[string]broker.DeadLetter, len(read))
		for _, d := range read {
			byPos[d.Pos] = d
		}
		for _, e := range batch {
			d, ok := byPos[e.newest]
			if !ok {
				continue // taken meanwhile (another replay)
			}
			r, err := wire.DecodeRequest(d.Message)
			if err != nil {
				continue
			}
			r.Attempts, r.LastError, r.DeadAt, r.AvoidURL = 0, "", time.Time{}, 0
			r.Gen++
			if perr = m.broker.Publish(ctx, broker.RequestTopic(backend), wire.EncodeRequest(r)); perr != nil {
				break
			}
			taken = append(taken, e.pos...)
			ev := job.EventFor(r, job.Queued, 0)
			events = append(events, ev)
			if perr = m.broker.Publish(ctx, broker.ResultTopic, wire.EncodeEvent(ev)); perr != nil {
				break // the request is written: its worker's events follow
			}
		}
	}
	if len(taken) > 0 {
		if err := m.broker.TakeDead(ctx, topic, taken); err != nil {
			return events, err
		}
	}
	return events, perr
}
