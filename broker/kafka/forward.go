package kafka

import (
	"context"
	"errors"
	"strconv"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/internal/retry"
)

// forward moves messages out of one delay tier once they have waited it,
// until ctx ends; hard ends its writes and commits in flight.
func (b *Broker) forward(ctx, hard context.Context, tier time.Duration) {
	select {
	case <-ctx.Done():
		return
	case <-b.ready:
	}
	r := kafkago.NewReader(kafkago.ReaderConfig{
		Brokers: b.opts.Brokers, GroupID: groupPrefix + b.opts.TopicPrefix + "delay",
		Topic: b.name(tierTopic(tier)), StartOffset: kafkago.FirstOffset,
		MaxBytes: b.fetchBytes(),
		// A fetch returns as soon as data is there; a long wait only spares
		// the broker idle polls.
		MaxWait: 2 * time.Second, ReadBackoffMin: 50 * time.Millisecond, ReadBackoffMax: time.Second,
		// All tiers share one group, so a member that goes away holds up
		// everyone's rejoin (and Close) until its session times out: kept
		// short, as for subscriptions.
		HeartbeatInterval: time.Second, SessionTimeout: 10 * time.Second, RebalanceTimeout: 10 * time.Second,
		JoinGroupBackoff:      500 * time.Millisecond,
		WatchPartitionChanges: true, PartitionWatchInterval: 2 * time.Second,
	})
	defer func() {
		if err := r.Close(); err != nil {
			b.opts.Log.Debug().Err(err).Dur("tier", tier).Msg("kafka: close delay reader")
		}
	}()
	for {
		var m kafkago.Message
		err := retry.Do(ctx, retry.Backoff(200*time.Millisecond, 5*time.Second), func() error {
			var err error
			if m, err = r.FetchMessage(ctx); err != nil && ctx.Err() == nil {
				b.opts.Log.Debug().Err(err).Dur("tier", tier).Msg("kafka: fetch from a delay tier (retrying)")
			}
			return err
		})
		if err != nil {
			return // ctx ended
		}
		msg, internal := fromKafka(m)
		ns, err := strconv.ParseInt(internal[hdrNotBefore], 10, 64)
		if err != nil { // not sluice's: due at once
			b.opts.Log.Debug().Err(err).Dur("tier", tier).Msg("kafka: message without a not-before time in a delay tier")
		}
		msg.NotBefore = time.Unix(0, ns)
		// Wait out the tier (all its messages wait the same), or less if due.
		until := m.Time.Add(tier)
		if msg.NotBefore.Before(until) {
			until = msg.NotBefore
		}
		if !retry.Sleep(ctx, time.Until(until)) {
			return
		}
		if w := time.Until(msg.NotBefore); w < broker.DelayTiers[0] && !retry.Sleep(ctx, w) {
			return // less than any tier is left: it was finished here
		}
		if !b.pass(ctx, hard, internal[hdrTarget], msg) {
			return
		}
		err = retry.Do(ctx, retry.Backoff(500*time.Millisecond, 5*time.Second), func() error {
			cctx, cancel := context.WithTimeout(hard, publishTimeout)
			defer cancel()
			return r.CommitMessages(cctx, m)
		})
		if err != nil {
			return // forwarded again after a restart: a duplicate, not a loss
		}
	}
}

// pass writes msg on towards target, to a smaller tier or to target itself
// once due; it returns false only when ctx ended first. Transient failures
// are tried again, each attempt bounded by publishTimeout and hard.
//
// A refusal for size is permanent, and a tier is FIFO: retrying it would
// hold up every message behind it for good. It happens only when a topic
// takes less than the one msg came through (an operator lowered it, an
// earlier run had a higher MaxMessageBytes). msg then goes straight to
// target without the delay headers, which may be what did not fit:
// delivered early rather than never. Should target refuse even that (or
// msg have no target), msg is passed over: its offset is committed and it
// stays in the tier topic, for its retention, where Kafka tools can still
// read it.
func (b *Broker) pass(ctx, hard context.Context, target string, msg broker.Message) bool {
	if target == "" {
		return true // not sluice's: nowhere to go
	}
	direct := false
	err := retry.Do(ctx, retry.Backoff(200*time.Millisecond, 5*time.Second), func() error {
		for {
			m := b.route(target, msg, time.Now())
			if direct {
				m = toKafka(b.name(target), msg)
			}
			pctx, cancel := context.WithTimeout(hard, publishTimeout)
			err := b.write(pctx, target, m)
			cancel()
			switch {
			case err == nil:
				return nil
			case errors.Is(err, broker.ErrTooLarge) && m.Topic == b.name(target):
				b.opts.Log.Warn().Err(err).Str("key", msg.Key).Str("topic", target).
					Msg("kafka: a held-back message is too large for its topic (was its max.message.bytes lowered?); " +
						"passed over, it stays in its delay tier and its request is not delivered again")
				return nil
			case errors.Is(err, broker.ErrTooLarge):
				direct = true // at once, without the delay headers
				continue
			}
			return err
		}
	})
	return err == nil
}
