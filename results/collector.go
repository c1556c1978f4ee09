package results

import (
	"context"
	"errors"
	"time"

	"github.com/rs/zerolog"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/job"
	"github.com/sluice-gw/sluice/wire"
)

// Collector moves status events from the result topic into a Store, in
// batches. An event is acknowledged only after the store committed it, so a
// crash replays events, never drops them; job.Record.Apply makes replays
// harmless.
type Collector struct {
	Sub   broker.Subscriber
	Store Store
	Log   zerolog.Logger
	// Batch is the most events written in one store commit. Default 512.
	Batch int
}

// Run collects until ctx ends.
func (c *Collector) Run(ctx context.Context) error {
	batch := c.Batch
	if batch <= 0 {
		batch = 512
	}
	sub, err := c.Sub.Subscribe(ctx, broker.ResultTopic, broker.SubscribeOptions{Prefetch: 2 * batch})
	if err != nil {
		return err
	}
	defer sub.Close()
	for {
		ds, err := sub.Fetch(ctx, batch)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, broker.ErrClosed) {
				return nil
			}
			// The broker is away for now: its client reconnects by itself.
			c.Log.Warn().Err(err).Msg("fetching status events; retrying")
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(500 * time.Millisecond):
			}
			continue
		}
		events := make([]*job.Event, 0, len(ds))
		keep := ds[:0]
		for _, d := range ds {
			e, err := wire.DecodeEvent(d.Message())
			if err != nil {
				c.Log.Error().Err(err).Msg("dropping undecodable status event")
				_ = d.Ack(ctx)
				continue
			}
			events = append(events, e)
			keep = append(keep, d)
		}
		// The commit is not cut short by shutdown: what was fetched is
		// either stored and acknowledged, or handed back.
		err = c.Store.Apply(context.WithoutCancel(ctx), events)
		for _, d := range keep {
			if err != nil {
				_ = d.Nack(context.WithoutCancel(ctx), time.Second)
			} else {
				_ = d.Ack(context.WithoutCancel(ctx))
			}
		}
		if err != nil {
			c.Log.Warn().Err(err).Int("events", len(events)).Msg("result store write failed; events handed back")
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Second):
			}
		}
	}
}
