package kafka

import (
	"context"
	"errors"
	"strconv"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/sluice-gw/sluice/broker"
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
	defer r.Close()
	for {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			if !sleep(ctx, 200*time.Millisecond) {
				return
			}
			continue
		}
		msg, internal := fromKafka(m)
		ns, _ := strconv.ParseInt(internal[hdrNotBefore], 10, 64)
		msg.NotBefore = time.Unix(0, ns)
		// Wait out the tier (all its messages wait the same), or less if due.
		until := m.Time.Add(tier)
		if msg.NotBefore.Before(until) {
			until = msg.NotBefore
		}
		if !sleep(ctx, time.Until(until)) {
			return
		}
		if w := time.Until(msg.NotBefore); w < broker.DelayTiers[0] && !sleep(ctx, w) {
			return // less than any tier is left: it was finished here
		}
		if !b.pass(ctx, hard, internal[hdrTarget], msg) {
			return
		}
		for {
			cctx, cancel := context.WithTimeout(hard, publishTimeout)
			err := r.CommitMessages(cctx, m)
			cancel()
			if err == nil {
				break
			}
			if !sleep(ctx, 500*time.Millisecond) {
				return // forwarded again after a restart: a duplicate, not a loss
			}
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
	for wait := 200 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		m := b.route(target, msg, time.Now())
		if direct {
			m = toKafka(b.name(target), msg)
		}
		pctx, cancel := context.WithTimeout(hard, publishTimeout)
		err := b.write(pctx, target, m)
		cancel()
		switch {
		case err == nil:
			return true
		case errors.Is(err, broker.ErrTooLarge) && m.Topic == b.name(target):
			return true
		case errors.Is(err, broker.ErrTooLarge):
			direct = true
			continue
		}
		if !sleep(ctx, wait) {
			return false
		}
	}
}
