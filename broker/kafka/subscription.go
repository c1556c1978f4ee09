package kafka

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/sluice-gw/sluice/internal/retry"

	"github.com/sluice-gw/sluice/broker"
)

// Subscribe joins topic's consumer group.
func (b *Broker) Subscribe(_ context.Context, topic string, opts broker.SubscribeOptions) (broker.Subscription, error) {
	if !b.topics[topic] {
		return nil, fmt.Errorf("kafka: unknown topic %q", topic)
	}
	queue := opts.Prefetch
	if queue <= 0 {
		queue = 64
	}
	clientID := fmt.Sprintf("sluice-%d-%d", os.Getpid(), subSeq.Add(1))
	cfg := kafkago.ReaderConfig{
		Brokers: b.opts.Brokers, GroupID: groupPrefix + b.name(topic), Topic: b.name(topic),
		Dialer:      &kafkago.Dialer{ClientID: clientID, Timeout: 10 * time.Second, DualStack: true},
		StartOffset: kafkago.FirstOffset, QueueCapacity: queue, MaxBytes: b.fetchBytes(),
		MaxWait: time.Second, ReadBackoffMin: 50 * time.Millisecond, ReadBackoffMax: time.Second,
		HeartbeatInterval: time.Second, SessionTimeout: 10 * time.Second, RebalanceTimeout: 10 * time.Second,
		JoinGroupBackoff: 500 * time.Millisecond,
		// Topics created after the reader joined (Kafka came up later)
		// and added partitions trigger a rebalance instead of going unread.
		WatchPartitionChanges: true, PartitionWatchInterval: 2 * time.Second,
	}
	ctx, cancel := context.WithCancel(context.Background())
	hard, kill := context.WithCancel(context.Background())
	s := &subscription{b: b, topic: topic, clientID: clientID, parts: map[int]*partition{},
		ctx: ctx, cancel: cancel, hard: hard, kill: kill, kick: make(chan struct{}, 1),
		started: make(chan struct{}), starterDone: make(chan struct{}),
		stopCommit: make(chan struct{}), commitDone: make(chan struct{})}
	go func() { // the reader joins the group once the topics exist
		defer close(s.starterDone)
		select {
		case <-s.ctx.Done():
		case <-b.ready:
			s.r = kafkago.NewReader(cfg)
			close(s.started)
		}
	}()
	go s.commitLoop()
	return s, nil
}

// partition tracks offsets handed out and settled, to commit only the
// highest offset below which everything is settled.
type partition struct {
	out     []int64        // offsets handed out, in order
	settled map[int64]bool // of those, the settled ones
	commit  int64          // next offset to commit (-1: none)
}

// subscription owns every goroutine it starts: the one that starts the
// reader, the commit loop and the republishers of Nacks Kafka could not
// take at once. Close stops and waits for all of them.
type subscription struct {
	b        *Broker
	topic    string
	clientID string
	r        *kafkago.Reader // set before started closes

	ctx    context.Context // ends when Close begins
	cancel context.CancelFunc
	hard   context.Context // ends republishes in flight, closeGrace later
	kill   context.CancelFunc

	started     chan struct{}
	starterDone chan struct{}
	stopCommit  chan struct{} // closed once nothing more can be settled
	commitDone  chan struct{}
	kick        chan struct{}

	mu      sync.Mutex
	parts   map[int]*partition
	closing bool           // no republisher starts once set
	nacks   sync.WaitGroup // republishers
	once    sync.Once
}

func (s *subscription) Fetch(ctx context.Context, max int) ([]broker.Delivery, error) {
	if s.ctx.Err() != nil {
		return nil, broker.ErrClosed
	}
	select {
	case <-s.started:
	case <-s.ctx.Done():
		return nil, broker.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	// Close cuts a waiting fetch short.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(s.ctx, cancel)()
	var out []broker.Delivery
	fctx := wctx
	for len(out) < max {
		m, err := s.r.FetchMessage(fctx)
		if err != nil {
			switch {
			case s.ctx.Err() != nil:
				// What was fetched stays unsettled: never committed, so
				// the group hands it out again.
				return nil, broker.ErrClosed
			case len(out) > 0:
				return out, nil
			case ctx.Err() != nil:
				return nil, ctx.Err()
			case errors.Is(err, io.EOF):
				return nil, broker.ErrClosed
			}
			return nil, fmt.Errorf("fetch %s: %w: %v", s.topic, broker.ErrUnavailable, err)
		}
		s.mu.Lock()
		p := s.parts[m.Partition]
		if p == nil {
			p = &partition{settled: map[int64]bool{}, commit: -1}
			s.parts[m.Partition] = p
		}
		p.out = append(p.out, m.Offset)
		s.mu.Unlock()
		out = append(out, &delivery{s: s, m: m})
		if len(out) == 1 && max > 1 { // the rest: only what is ready now
			var cancelNow context.CancelFunc
			fctx, cancelNow = context.WithTimeout(wctx, time.Millisecond)
			defer cancelNow()
		}
	}
	return out, nil
}

// settle marks m settled and wakes the committer.
func (s *subscription) settle(m kafkago.Message) {
	s.mu.Lock()
	p := s.parts[m.Partition]
	p.settled[m.Offset] = true
	for len(p.out) > 0 && p.settled[p.out[0]] {
		delete(p.settled, p.out[0])
		p.commit = p.out[0]
		p.out = p.out[1:]
	}
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// commitLoop commits what was settled, at most once per commitEvery: a
// commit is a round trip to the group coordinator, and one per settle made
// each delivery at a set rate pay for its own. Waiting only delays the
// commit (a crash meanwhile redelivers, never skips).
func (s *subscription) commitLoop() {
	defer close(s.commitDone)
	t := time.NewTimer(commitEvery)
	defer t.Stop()
	for {
		select {
		case <-s.kick:
		case <-s.stopCommit:
			s.commitNow() // everything settled before Close
			return
		}
		t.Reset(commitEvery)
		select {
		case <-t.C:
		case <-s.stopCommit:
			s.commitNow()
			return
		}
		s.commitNow()
	}
}

func (s *subscription) commitNow() {
	s.mu.Lock()
	var msgs []kafkago.Message
	for id, p := range s.parts {
		if p.commit >= 0 {
			msgs = append(msgs, kafkago.Message{Topic: s.b.name(s.topic), Partition: id, Offset: p.commit})
			p.commit = -1
		}
	}
	s.mu.Unlock()
	if len(msgs) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := s.r.CommitMessages(ctx, msgs...)
	if err == nil {
		return
	}
	// A failed commit means a redelivery, never a loss; the offsets go
	// with the next commit unless a later one has replaced them.
	s.b.opts.Log.Debug().Err(err).Str("topic", s.topic).Msg("kafka: commit (retried with the next)")
	s.mu.Lock()
	for _, m := range msgs {
		if p := s.parts[m.Partition]; p.commit < m.Offset {
			p.commit = m.Offset
		}
	}
	s.mu.Unlock()
}

// Close stops fetching and the republishers (an attempt in flight gets
// closeGrace to finish), commits what was settled before (a Nack whose
// copy landed included), then leaves the group.
func (s *subscription) Close() error {
	s.once.Do(func() {
		s.mu.Lock()
		s.closing = true
		s.mu.Unlock()
		s.cancel()
		grace := time.AfterFunc(closeGrace, s.kill)
		s.nacks.Wait()
		grace.Stop()
		s.kill()
		<-s.starterDone
		close(s.stopCommit)
		<-s.commitDone
		select {
		case <-s.started:
			if err := s.r.Close(); err != nil {
				s.b.opts.Log.Debug().Err(err).Str("topic", s.topic).Msg("kafka: leave the consumer group")
			}
		default:
		}
	})
	return nil
}

var _ broker.Sharer = (*subscription)(nil)

// Share is the fraction of the topic's partitions the group assigned to
// this subscription: the group's members identify by client id.
func (s *subscription) Share(ctx context.Context) (float64, error) {
	group := groupPrefix + s.b.name(s.topic)
	resp, err := s.b.client.DescribeGroups(ctx, &kafkago.DescribeGroupsRequest{GroupIDs: []string{group}})
	if err != nil {
		return 0, err
	}
	mine, total := 0, 0
	for _, g := range resp.Groups {
		for _, m := range g.Members {
			for _, t := range m.MemberAssignments.Topics {
				total += len(t.Partitions)
				if m.ClientID == s.clientID {
					mine += len(t.Partitions)
				}
			}
		}
	}
	if total == 0 {
		return 0, errors.New("no partitions assigned yet")
	}
	return float64(mine) / float64(total), nil
}

// subSeq numbers subscriptions, for their client ids.
var subSeq atomic.Int64

type delivery struct {
	s    *subscription
	m    kafkago.Message
	done atomic.Bool // settled: an Ack, or a Nack whose copy landed
}

func (d *delivery) Message() broker.Message {
	msg, _ := fromKafka(d.m)
	return msg
}

// settle settles d once, whoever gets there first (Ack after a Nack that
// is still republishing, say).
func (d *delivery) settle() {
	if d.done.CompareAndSwap(false, true) {
		d.s.settle(d.m)
	}
}

func (d *delivery) Ack(context.Context) error {
	d.settle()
	return nil
}

// Nack puts a copy back (after delay, through a delay tier) and settles
// the original once the copy landed: Kafka cannot un-read an offset.
//
// If Kafka cannot take the copy now, Nack returns that error and the
// subscription keeps trying in the background until Close; the offset of
// a message whose copy never landed stays uncommitted, so the group hands
// it out again. A copy refused for its size (broker.ErrTooLarge) is not
// tried again: settling the original would lose the message, so it stays
// unsettled for the caller to deal with (dead-letter or fail it, then Ack).
func (d *delivery) Nack(ctx context.Context, delay time.Duration) error {
	if d.done.Load() {
		return nil
	}
	msg := d.Message()
	if delay > 0 {
		msg.NotBefore = time.Now().Add(delay)
	}
	err := d.s.b.Publish(ctx, d.s.topic, msg)
	switch {
	case err == nil:
		d.settle()
		return nil
	case errors.Is(err, broker.ErrTooLarge):
		return err
	}
	d.s.republish(d, msg)
	return err
}

// republish tries to put d's copy msg back until it lands, d is settled
// otherwise, Kafka refuses it for its size, or the subscription closes.
func (s *subscription) republish(d *delivery, msg broker.Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return
	}
	s.nacks.Add(1)
	go func() {
		defer s.nacks.Done()
		// The first attempt, Nack's own, failed just now.
		if !retry.Sleep(s.ctx, 200*time.Millisecond) {
			return
		}
		err := retry.Do(s.ctx, retry.Backoff(400*time.Millisecond, 5*time.Second), func() error {
			if d.done.Load() {
				return nil
			}
			pctx, cancel := context.WithTimeout(s.hard, publishTimeout)
			defer cancel()
			err := s.b.Publish(pctx, s.topic, msg)
			switch {
			case err == nil:
				d.settle()
			case errors.Is(err, broker.ErrTooLarge):
				return retry.Permanent(err)
			}
			return err
		})
		if err != nil && s.ctx.Err() == nil {
			s.b.opts.Log.Warn().Err(err).Str("key", msg.Key).Str("topic", s.topic).
				Msg("kafka: a nacked message's copy is refused; its original stays unsettled")
		}
	}()
}
