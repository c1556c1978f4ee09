package kafka

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/sluice-gw/sluice/broker"
)

// Options configure the Kafka broker.
type Options struct {
	Brokers     []string
	TopicPrefix string   // default "sluice."
	Partitions  int      // for topics sluice creates; default 6
	Backends    []string // request and dead-letter topics of each
	// Forward runs this process's share of the delay-tier forwarders.
	// Every process that publishes held-back messages should; default on.
	NoForward bool
	// BatchTimeout is how long the writer waits to fill a batch. Default 2ms.
	BatchTimeout time.Duration
	// MaxMessageBytes is the largest message Publish takes (larger:
	// broker.ErrTooLarge), the writer's batch size and the topics'
	// max.message.bytes. Default 4 MiB.
	MaxMessageBytes int
	// ReplicationFactor of the topics sluice creates. Default min(3,
	// brokers in the cluster).
	ReplicationFactor int
	// MinInsyncReplicas is the topics' min.insync.replicas. Default
	// max(1, ReplicationFactor-1).
	MinInsyncReplicas int
	// Retention is retention.ms of request, result and delay topics.
	// Default 30 days.
	Retention time.Duration
	// DeadLetterRetention is retention.ms of dead-letter topics and the
	// taken-positions topic; 0 keeps them forever.
	DeadLetterRetention time.Duration
}

const (
	hdrKey       = "sluice-key"
	hdrNotBefore = "sluice-not-before"
	hdrTarget    = "sluice-delay-target"
	groupPrefix  = "sluice-"
)

func tierTopic(d time.Duration) string { return "delay." + d.String() }

// Broker is the Kafka broker. It is safe for concurrent use.
type Broker struct {
	opts   Options
	client *kafkago.Client
	w      *kafkago.Writer
	topics map[string]bool // logical topics sluice declared
	ready  chan struct{}   // closed once every topic exists
	stop   context.CancelFunc
	wg     sync.WaitGroup
}

var _ broker.Broker = (*Broker)(nil)

// Open connects, creates missing topics and starts the delay forwarders.
// When Kafka does not answer before ctx ends, Open still returns: topics are
// created as soon as it does, and until then publishes fail with
// broker.ErrUnavailable.
func Open(ctx context.Context, opts Options) (*Broker, error) {
	if opts.TopicPrefix == "" {
		opts.TopicPrefix = "sluice."
	}
	if opts.Partitions <= 0 {
		opts.Partitions = 6
	}
	if opts.BatchTimeout <= 0 {
		opts.BatchTimeout = 2 * time.Millisecond
	}
	addr := kafkago.TCP(opts.Brokers...)
	b := &Broker{
		opts:   opts,
		client: &kafkago.Client{Addr: addr, Timeout: 10 * time.Second},
		w: &kafkago.Writer{
			Addr:         addr,
			Balancer:     &kafkago.Hash{},
			RequiredAcks: kafkago.RequireAll,
			BatchTimeout: opts.BatchTimeout,
			BatchSize:    1000,
			MaxAttempts:  3,
			WriteTimeout: 10 * time.Second,
			ReadTimeout:  10 * time.Second,
		},
		topics: map[string]bool{broker.ResultTopic: true, takenTopic: true},
		ready:  make(chan struct{}),
	}
	for _, be := range opts.Backends {
		b.topics[broker.RequestTopic(be)] = true
		b.topics[broker.DeadLetterTopic(be)] = true
	}
	all := make([]string, 0, len(b.topics)+len(broker.DelayTiers))
	for t := range b.topics {
		all = append(all, t)
	}
	for _, d := range broker.DelayTiers {
		all = append(all, tierTopic(d))
	}
	fctx, cancel := context.WithCancel(context.Background())
	b.stop = cancel
	// Topics are created in the background when Kafka is not there yet:
	// sluice starts, answers 503 until Kafka is reachable, then recovers.
	// Readers start only once the topics exist: a consumer group that joins
	// before its topic exists is never assigned its partitions.
	if err := b.createTopics(ctx, all); err == nil {
		close(b.ready)
	} else {
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			if b.createTopics(fctx, all) == nil {
				close(b.ready)
			}
		}()
	}
	if !opts.NoForward {
		for _, d := range broker.DelayTiers {
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				b.forward(fctx, d)
			}()
		}
	}
	return b, nil
}

func (b *Broker) name(topic string) string { return b.opts.TopicPrefix + topic }

func (b *Broker) createTopics(ctx context.Context, topics []string) error {
	req := &kafkago.CreateTopicsRequest{}
	for _, t := range topics {
		req.Topics = append(req.Topics, kafkago.TopicConfig{
			Topic: b.name(t), NumPartitions: b.opts.Partitions, ReplicationFactor: -1,
		})
	}
	for {
		resp, err := b.client.CreateTopics(ctx, req)
		if err == nil {
			for t, terr := range resp.Errors {
				if terr != nil && !errors.Is(terr, kafkago.TopicAlreadyExists) {
					return fmt.Errorf("kafka: create topic %s: %w", t, terr)
				}
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kafka: create topics: %w: %v", broker.ErrUnavailable, err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func toKafka(topic string, msg broker.Message) kafkago.Message {
	m := kafkago.Message{Topic: topic, Key: []byte(msg.Key), Value: msg.Body,
		Headers: make([]kafkago.Header, 0, len(msg.Headers)+2)}
	for k, v := range msg.Headers {
		m.Headers = append(m.Headers, kafkago.Header{Key: k, Value: []byte(v)})
	}
	m.Headers = append(m.Headers, kafkago.Header{Key: hdrKey, Value: []byte(msg.Key)})
	return m
}

func fromKafka(m kafkago.Message) (broker.Message, map[string]string) {
	msg := broker.Message{Key: string(m.Key), Body: m.Value, Headers: make(map[string]string, len(m.Headers))}
	internal := map[string]string{}
	for _, h := range m.Headers {
		switch h.Key {
		case hdrKey, hdrNotBefore, hdrTarget:
			internal[h.Key] = string(h.Value)
		default:
			msg.Headers[h.Key] = string(h.Value)
		}
	}
	if k := internal[hdrKey]; k != "" {
		msg.Key = k
	}
	return msg, internal
}

// Publish writes msg with acks from all in-sync replicas. A message held
// back (NotBefore) goes to a delay tier first.
func (b *Broker) Publish(ctx context.Context, topic string, msg broker.Message) error {
	if !b.topics[topic] {
		return fmt.Errorf("kafka: unknown topic %q", topic)
	}
	m := b.route(topic, msg, time.Now())
	if err := b.w.WriteMessages(ctx, m); err != nil {
		return fmt.Errorf("publish %s: %w: %v", topic, broker.ErrUnavailable, err)
	}
	return nil
}

// route picks the Kafka topic for msg: its own, or the delay tier it waits in.
func (b *Broker) route(topic string, msg broker.Message, now time.Time) kafkago.Message {
	tier, ok := broker.DelayTier(msg.NotBefore.Sub(now))
	if msg.NotBefore.IsZero() || !ok {
		return toKafka(b.name(topic), msg)
	}
	m := toKafka(b.name(tierTopic(tier)), msg)
	m.Headers = append(m.Headers,
		kafkago.Header{Key: hdrTarget, Value: []byte(topic)},
		kafkago.Header{Key: hdrNotBefore, Value: []byte(strconv.FormatInt(msg.NotBefore.UnixNano(), 10))})
	return m
}

// forward moves messages out of one delay tier once they have waited it.
func (b *Broker) forward(ctx context.Context, tier time.Duration) {
	select {
	case <-ctx.Done():
		return
	case <-b.ready:
	}
	r := kafkago.NewReader(kafkago.ReaderConfig{
		Brokers: b.opts.Brokers, GroupID: groupPrefix + b.opts.TopicPrefix + "delay",
		Topic: b.name(tierTopic(tier)), StartOffset: kafkago.FirstOffset,
		// A fetch returns as soon as data is there; a long wait only spares
		// the broker idle polls.
		MaxWait: 2 * time.Second, ReadBackoffMin: 50 * time.Millisecond, ReadBackoffMax: time.Second,
		WatchPartitionChanges: true, PartitionWatchInterval: 2 * time.Second,
	})
	defer r.Close()
	for {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			time.Sleep(200 * time.Millisecond)
			continue
		}
		msg, internal := fromKafka(m)
		target := internal[hdrTarget]
		ns, _ := strconv.ParseInt(internal[hdrNotBefore], 10, 64)
		msg.NotBefore = time.Unix(0, ns)
		// Wait out the tier (all its messages wait the same), or less if due.
		until := m.Time.Add(tier)
		if msg.NotBefore.Before(until) {
			until = msg.NotBefore
		}
		if w := time.Until(until); w > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(w):
			}
		}
		if w := time.Until(msg.NotBefore); w > 0 && w < broker.DelayTiers[0] {
			time.Sleep(w) // less than any tier: finish the wait here
		}
		for b.w.WriteMessages(ctx, b.route(target, msg, time.Now())) != nil {
			if ctx.Err() != nil {
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
		for r.CommitMessages(ctx, m) != nil {
			if ctx.Err() != nil {
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
}

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
		StartOffset: kafkago.FirstOffset, QueueCapacity: queue,
		MaxWait: time.Second, ReadBackoffMin: 50 * time.Millisecond, ReadBackoffMax: time.Second,
		HeartbeatInterval: time.Second, SessionTimeout: 10 * time.Second, RebalanceTimeout: 10 * time.Second,
		JoinGroupBackoff: 500 * time.Millisecond,
		// Topics created after the reader joined (Kafka came up later)
		// and added partitions trigger a rebalance instead of going unread.
		WatchPartitionChanges: true, PartitionWatchInterval: 2 * time.Second,
	}
	s := &subscription{b: b, topic: topic, clientID: clientID, parts: map[int]*partition{},
		kick: make(chan struct{}, 1), closed: make(chan struct{}), done: make(chan struct{}),
		started: make(chan struct{}), starter: make(chan struct{})}
	go func() { // the reader joins the group once the topics exist
		defer close(s.starter)
		select {
		case <-s.closed:
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

type subscription struct {
	b        *Broker
	topic    string
	r        *kafkago.Reader // set before started closes
	started  chan struct{}
	starter  chan struct{} // closed when the starting goroutine is done
	clientID string
	mu       sync.Mutex
	parts    map[int]*partition
	kick     chan struct{}
	closed   chan struct{}
	done     chan struct{}
	once     sync.Once
}

func (s *subscription) Fetch(ctx context.Context, max int) ([]broker.Delivery, error) {
	select {
	case <-s.started:
	case <-s.closed:
		return nil, broker.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	var out []broker.Delivery
	for len(out) < max {
		fctx := ctx
		var cancel context.CancelFunc = func() {}
		if len(out) > 0 { // only what is ready now
			fctx, cancel = context.WithTimeout(ctx, time.Millisecond)
		}
		m, err := s.r.FetchMessage(fctx)
		cancel()
		if err != nil {
			if len(out) > 0 {
				return out, nil
			}
			select {
			case <-s.closed:
				return nil, broker.ErrClosed
			default:
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if errors.Is(err, io.EOF) {
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

func (s *subscription) commitLoop() {
	defer close(s.done)
	for {
		select {
		case <-s.kick:
		case <-s.closed:
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
	_ = s.r.CommitMessages(ctx, msgs...) // a failed commit means a redelivery, never a loss
}

func (s *subscription) Close() error {
	s.once.Do(func() {
		close(s.closed)
		<-s.done
		<-s.starter
		select {
		case <-s.started:
			_ = s.r.Close()
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
	s *subscription
	m kafkago.Message
}

func (d *delivery) Message() broker.Message {
	msg, _ := fromKafka(d.m)
	return msg
}

func (d *delivery) Ack(context.Context) error {
	d.s.settle(d.m)
	return nil
}

// Nack puts a copy back (after delay, through a delay tier) and settles
// the original: Kafka cannot un-read an offset. If Kafka cannot take the
// copy now, it keeps trying in the background; should the subscription
// close first, the offset stays uncommitted and the group hands the
// message out again.
func (d *delivery) Nack(ctx context.Context, delay time.Duration) error {
	msg := d.Message()
	if delay > 0 {
		msg.NotBefore = time.Now().Add(delay)
	}
	err := d.s.b.Publish(ctx, d.s.topic, msg)
	if err == nil {
		d.s.settle(d.m)
		return nil
	}
	go func() {
		for wait := 200 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
			select {
			case <-d.s.closed:
				return
			case <-time.After(wait):
			}
			pctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := d.s.b.Publish(pctx, d.s.topic, msg)
			cancel()
			if err == nil {
				d.s.settle(d.m)
				return
			}
		}
	}()
	return err
}

// Stats sums, over the topic's partitions, the end offsets less the
// group's committed offsets.
func (b *Broker) Stats(ctx context.Context, topic string) (broker.QueueStats, error) {
	name := b.name(topic)
	md, err := b.client.Metadata(ctx, &kafkago.MetadataRequest{Topics: []string{name}})
	if err != nil || len(md.Topics) == 0 {
		return broker.QueueStats{}, fmt.Errorf("stats %s: %w: %v", topic, broker.ErrUnavailable, err)
	}
	var reqs []kafkago.OffsetRequest
	var ids []int
	for _, p := range md.Topics[0].Partitions {
		reqs = append(reqs, kafkago.LastOffsetOf(p.ID))
		ids = append(ids, p.ID)
	}
	lo, err := b.client.ListOffsets(ctx, &kafkago.ListOffsetsRequest{Topics: map[string][]kafkago.OffsetRequest{name: reqs}})
	if err != nil {
		return broker.QueueStats{}, fmt.Errorf("stats %s: %w: %v", topic, broker.ErrUnavailable, err)
	}
	of, err := b.client.OffsetFetch(ctx, &kafkago.OffsetFetchRequest{GroupID: groupPrefix + name, Topics: map[string][]int{name: ids}})
	if err != nil {
		return broker.QueueStats{}, fmt.Errorf("stats %s: %w: %v", topic, broker.ErrUnavailable, err)
	}
	committed := map[int]int64{}
	for _, p := range of.Topics[name] {
		if p.CommittedOffset > 0 {
			committed[p.Partition] = p.CommittedOffset
		}
	}
	var st broker.QueueStats
	for _, p := range lo.Topics[name] {
		st.Depth += p.LastOffset - committed[p.Partition]
		st.Consumed += committed[p.Partition]
	}
	return st, nil
}

// Ping asks the cluster for its metadata.
func (b *Broker) Ping(ctx context.Context) error {
	if _, err := b.client.Metadata(ctx, &kafkago.MetadataRequest{Topics: []string{b.name(broker.ResultTopic)}}); err != nil {
		return fmt.Errorf("%w: %v", broker.ErrUnavailable, err)
	}
	return nil
}

// Close stops the forwarders and flushes the writer.
func (b *Broker) Close() error {
	b.stop()
	b.wg.Wait()
	return b.w.Close()
}
