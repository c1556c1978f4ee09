package workers

import (
	"context"
	"slices"
	"time"

	"github.com/rs/zerolog"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/job"
	"github.com/sluice-gw/sluice/wire"
)

// Recorder applies status events to the result store.
type Recorder interface {
	Apply(ctx context.Context, events []*job.Event) error
}

// DeadLetters administers the backends' dead-letter topics: it lists them
// and replays them, all of it in one place.
type DeadLetters struct {
	broker   broker.Broker
	backends []string
	store    Recorder // optional
	log      zerolog.Logger
}

// NewDeadLetters administers the dead letters of backends on br; store,
// when not nil, gets replays' resets at once.
func NewDeadLetters(br broker.Broker, backends []string, store Recorder, log zerolog.Logger) *DeadLetters {
	return &DeadLetters{broker: br, backends: slices.Clone(backends), store: store, log: log}
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

func (d *DeadLetters) byID(ctx context.Context, backend string) ([]*deadEntry, error) {
	if !slices.Contains(d.backends, backend) {
		return nil, ErrUnknownBackend
	}
	list, err := d.broker.ListDead(ctx, broker.DeadLetterTopic(backend), 0)
	if err != nil {
		return nil, err
	}
	byID := map[string]*deadEntry{}
	var out []*deadEntry
	for _, dl := range list {
		r, err := wire.DecodeRequest(dl.Message)
		if err != nil {
			continue
		}
		e := byID[r.ID]
		if e == nil {
			e = &deadEntry{req: r, newest: dl.Pos}
			byID[r.ID] = e
			out = append(out, e)
		} else if r.Gen >= e.req.Gen {
			e.req, e.newest = r, dl.Pos
		}
		e.pos = append(e.pos, dl.Pos)
	}
	return out, nil
}

// ErrDeliveryLimit is the last error of a request the broker moved to the
// dead-letter queue by itself: it was handed back more often than the
// queue's delivery limit (RabbitMQ's x-delivery-limit), say by a crash loop.
const ErrDeliveryLimit = "delivery limit reached"

// List lists up to limit dead letters of backend, oldest first, each
// request id once. A request the broker dead-lettered by itself (it carries
// no dead-letter time) is recorded as failed on the way, so its poll stops
// saying it is pending.
func (d *DeadLetters) List(ctx context.Context, backend string, limit int) ([]DeadLetter, error) {
	entries, err := d.byID(ctx, backend)
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
			_ = d.broker.Publish(ctx, broker.ResultTopic, wire.EncodeEvent(ev)) // idempotent; next listing tries again
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
// With a result store, the queued events are also applied to it at once, so
// polls show the reset without waiting for the collector (which applies
// them too). Replay returns how many it replayed.
func (d *DeadLetters) Replay(ctx context.Context, backend string, ids []string) (int, error) {
	events, err := d.replay(ctx, backend, ids)
	if d.store != nil && len(events) > 0 {
		if aerr := d.store.Apply(ctx, events); aerr != nil {
			d.log.Warn().Err(aerr).Msg("replay: the result store shows the reset once the collector applies it")
		}
	}
	return len(events), err
}

func (d *DeadLetters) replay(ctx context.Context, backend string, ids []string) ([]*job.Event, error) {
	entries, err := d.byID(ctx, backend)
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
		read, err := d.broker.ReadDead(ctx, topic, pos)
		if err != nil {
			perr = err
			break
		}
		byPos := make(map[string]broker.DeadLetter, len(read))
		for _, dl := range read {
			byPos[dl.Pos] = dl
		}
		for _, e := range batch {
			dl, ok := byPos[e.newest]
			if !ok {
				continue // taken meanwhile (another replay)
			}
			r, err := wire.DecodeRequest(dl.Message)
			if err != nil {
				continue
			}
			r.Attempts, r.LastError, r.DeadAt, r.AvoidURL = 0, "", time.Time{}, 0
			r.Gen++
			if perr = d.broker.Publish(ctx, broker.RequestTopic(backend), wire.EncodeRequest(r)); perr != nil {
				break
			}
			taken = append(taken, e.pos...)
			ev := job.EventFor(r, job.Queued, 0)
			events = append(events, ev)
			if perr = d.broker.Publish(ctx, broker.ResultTopic, wire.EncodeEvent(ev)); perr != nil {
				break // the request is written: its worker's events follow
			}
		}
	}
	if len(taken) > 0 {
		if err := d.broker.TakeDead(ctx, topic, taken); err != nil {
			return events, err
		}
	}
	return events, perr
}
