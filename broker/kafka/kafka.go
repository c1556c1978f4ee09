package kafka

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/rs/zerolog"
	kafkago "github.com/segmentio/kafka-go"

	"github.com/sluice-gw/sluice/broker"
)

// Options configure the Kafka broker.
type Options struct {
	Brokers     []string
	TopicPrefix string   // default DefaultTopicPrefix
	Partitions  int      // for topics sluice creates; default DefaultPartitions
	Backends    []string // request and dead-letter topics of each
	// NoForward leaves the delay-tier forwarders to other processes. By
	// default a process runs its share of them (in Run), as every process
	// that publishes held-back messages should.
	NoForward bool
	// BatchTimeout is how long the writer waits to fill a batch. Default
	// DefaultBatchTimeout.
	BatchTimeout time.Duration
	// MaxMessageBytes is the largest message Publish takes (larger:
	// broker.ErrTooLarge), the writer's batch size and, with room for
	// Kafka's batch framing, the topics' max.message.bytes and what every
	// reader fetches at once. Default DefaultMaxMessageBytes.
	MaxMessageBytes int
	// ReplicationFactor of the topics sluice creates. Default min(3,
	// brokers in the cluster) — as many as answer when the topics are
	// created, so set it on a cluster that may start one broker at a time.
	ReplicationFactor int
	// MinInsyncReplicas is the topics' min.insync.replicas. Default
	// max(1, ReplicationFactor-1); never more than a topic's replicas.
	MinInsyncReplicas int
	// Retention is retention.ms of request, result and delay topics.
	// Default DefaultRetention.
	Retention time.Duration
	// DeadLetterRetention is retention.ms of dead-letter topics and the
	// taken-positions topic; 0 keeps them forever.
	DeadLetterRetention time.Duration
	// Log receives what the broker cannot return to a caller: topics not
	// ready yet, a forwarded message passed over. The zero Logger logs
	// nothing.
	Log zerolog.Logger
}

// Defaults of Options' zero values.
const (
	DefaultTopicPrefix     = "sluice."
	DefaultPartitions      = 6
	DefaultBatchTimeout    = 2 * time.Millisecond
	DefaultMaxMessageBytes = 4 << 20
	DefaultRetention       = 30 * 24 * time.Hour
)

// withDefaults fills o's zero values with their defaults.
func (o Options) withDefaults() Options {
	if o.TopicPrefix == "" {
		o.TopicPrefix = DefaultTopicPrefix
	}
	if o.Partitions <= 0 {
		o.Partitions = DefaultPartitions
	}
	if o.BatchTimeout <= 0 {
		o.BatchTimeout = DefaultBatchTimeout
	}
	if o.MaxMessageBytes <= 0 {
		o.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if o.Retention <= 0 {
		o.Retention = DefaultRetention
	}
	return o
}

const (
	hdrKey       = "sluice-key"
	hdrNotBefore = "sluice-not-before"
	hdrTarget    = "sluice-delay-target"
	groupPrefix  = "sluice-"

	// batchRoom is how far a topic's max.message.bytes exceeds the
	// writer's BatchBytes: Kafka measures a whole v2 record batch (a
	// 61-byte header, per-record framing kafka-go estimates only roughly),
	// not the messages in it.
	batchRoom = 16 << 10

	// writerBatch is the most messages in one write of a partition.
	writerBatch = 128

	// commitEvery is how long a settled offset may wait to be committed
	// with those settled after it.
	commitEvery = 50 * time.Millisecond

	// publishTimeout bounds one background publish attempt (a Nack's copy,
	// a forwarded message), so that a hung attempt is given up and tried
	// again.
	publishTimeout = 10 * time.Second
	// closeGrace is how long a background publish or commit in flight may
	// still take once its owner closes. A write that reached Kafka is let
	// finish rather than cut short: not knowing it landed, its owner would
	// leave the original unsettled, and the message would come twice.
	closeGrace = 2 * time.Second
)

func tierTopic(d time.Duration) string { return "delay." + d.String() }

// Broker is the Kafka broker. It is safe for concurrent use.
type Broker struct {
	opts   Options
	client *kafkago.Client
	w      *kafkago.Writer // waits BatchTimeout to fill a batch
	// eager writes request topics at once: what comes there is packed
	// already (the ingress's group commit), or a retry that has waited.
	eager  *kafkago.Writer
	topics map[string]bool // logical topics sluice declared
	// eagerTopics are the Kafka topics (prefixed: request topics, not
	// their delay tiers) that eager writes.
	eagerTopics map[string]bool
	all         []string // every topic to prepare, delay tiers included

	ready     chan struct{} // closed once every topic exists
	readyOnce sync.Once
	prepared  bool // Open finished preparing; else Run goes on with it
	mu        sync.Mutex
	setupErr  error // why the topics are not ready, for Ping
}

var _ broker.Broker = (*Broker)(nil)

// newWriter is a writer that waits up to linger to fill a batch.
func newWriter(addr net.Addr, opts Options, linger time.Duration) *kafkago.Writer {
	return &kafkago.Writer{
		Addr:         addr,
		Balancer:     &kafkago.Hash{},
		RequiredAcks: kafkago.RequireAll,
		BatchTimeout: linger,
		// kafka-go allocates room for BatchSize messages with every
		// batch (152 bytes each), full or not: at a set rate each
		// publish is a batch of its own, and 1000 made every one
		// allocate and clear 150 KiB. Publishes wait for their acks,
		// so a batch holds at most the publishes in flight to one
		// partition at once; a fuller one is written at once.
		BatchSize: writerBatch,
		// kafka-go refuses a message larger than this before sending
		// it, and Kafka one larger than max.message.bytes.
		BatchBytes:   int64(opts.MaxMessageBytes),
		MaxAttempts:  3,
		WriteTimeout: 10 * time.Second,
		ReadTimeout:  10 * time.Second,
	}
}

// Open connects, creates missing topics and corrects the settings of
// existing ones, trying again until that is done or ctx ends. When Kafka
// does not answer before ctx ends, Open still returns: Run goes on, the
// topics are created and corrected as soon as Kafka answers, and until then
// publishes fail with broker.ErrUnavailable. Open starts no goroutine of
// its own (kafka-go's writer starts its own on the first write); the delay
// forwarders run in Run.
func Open(ctx context.Context, opts Options) (*Broker, error) {
	opts = opts.withDefaults()
	addr := kafkago.TCP(opts.Brokers...)
	b := &Broker{
		opts:   opts,
		client: &kafkago.Client{Addr: addr, Timeout: 10 * time.Second},
		w:      newWriter(addr, opts, opts.BatchTimeout),
		eager:  newWriter(addr, opts, time.Microsecond), // 0 would be kafka-go's 1 s
		topics: map[string]bool{broker.ResultTopic: true, takenTopic: true},
		ready:  make(chan struct{}),
	}
	b.eagerTopics = map[string]bool{}
	for _, be := range opts.Backends {
		b.eagerTopics[b.name(broker.RequestTopic(be))] = true
		b.topics[broker.RequestTopic(be)] = true
		b.topics[broker.DeadLetterTopic(be)] = true
	}
	b.all = make([]string, 0, len(b.topics)+len(broker.DelayTiers))
	for t := range b.topics {
		b.all = append(b.all, t)
	}
	for _, d := range broker.DelayTiers {
		b.all = append(b.all, tierTopic(d))
	}
	// A Kafka that answers has its topics in place by the time Open
	// returns; one that does not is waited for only until ctx ends, and
	// then in Run, for as long as Kafka is not there: sluice starts,
	// answers 503 until Kafka is reachable, then recovers.
	b.prepared = b.prepare(ctx)
	return b, nil
}

// Run prepares the topics, if Open could not, and runs this process's
// share of the delay forwarders (none with NoForward) until ctx ends. A
// forwarder's write or commit in flight then gets closeGrace to finish.
// Readers start only once the topics exist: a consumer group that joins
// before its topic exists is never assigned its partitions.
func (b *Broker) Run(ctx context.Context) error {
	hard, kill := context.WithCancel(context.WithoutCancel(ctx))
	defer kill()
	var wg sync.WaitGroup
	if !b.prepared {
		wg.Go(func() { b.prepare(ctx) })
	}
	if !b.opts.NoForward {
		for _, d := range broker.DelayTiers {
			wg.Go(func() { b.forward(ctx, hard, d) })
		}
	}
	<-ctx.Done()
	grace := time.AfterFunc(closeGrace, kill)
	wg.Wait()
	grace.Stop()
	return nil
}

func (b *Broker) name(topic string) string { return b.opts.TopicPrefix + topic }

// MaxMessageBytes is the largest message Publish takes, counted as its key,
// body and headers.
func (b *Broker) MaxMessageBytes() int { return b.opts.MaxMessageBytes }

// fetchBytes is what every reader asks for at once: at least the largest
// record batch a topic takes, so that no message is too large to read.
func (b *Broker) fetchBytes() int { return b.opts.MaxMessageBytes + batchRoom }

func toKafka(topic string, msg broker.Message) kafkago.Message {
	key := []byte(msg.Key)
	m := kafkago.Message{Topic: topic, Key: key, Value: msg.Body,
		Headers: make([]kafkago.Header, 0, len(msg.Headers)+2)}
	for k, v := range msg.Headers {
		m.Headers = append(m.Headers, kafkago.Header{Key: k, Value: []byte(v)})
	}
	m.Headers = append(m.Headers, kafkago.Header{Key: hdrKey, Value: key}) // read-only: one copy serves both
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
	n := size(m)
	if msg.NotBefore.IsZero() || m.Topic == b.name(topic) { // not in a tier now
		// Counted as if it waited in a tier: a message taken now must
		// still fit when a Nack sends it through one.
		n += delayRoom(topic)
	}
	if n > b.opts.MaxMessageBytes {
		return fmt.Errorf("publish %s: %w: %d bytes, the limit is %d", topic, broker.ErrTooLarge, n, b.opts.MaxMessageBytes)
	}
	return b.write(ctx, topic, m)
}

// write writes m, telling a refusal for size (permanent) from everything
// else (transient).
func (b *Broker) write(ctx context.Context, topic string, m kafkago.Message) error {
	w := b.w
	if b.eagerTopics[m.Topic] {
		w = b.eager
	}
	err := w.WriteMessages(ctx, m)
	switch {
	case err == nil:
		return nil
	case tooLarge(err):
		return fmt.Errorf("publish %s: %w: %v", topic, broker.ErrTooLarge, err)
	}
	return fmt.Errorf("publish %s: %w: %v", topic, broker.ErrUnavailable, err)
}

// tooLarge reports whether kafka-go (MessageTooLargeError, before sending)
// or Kafka (MESSAGE_TOO_LARGE, RECORD_LIST_TOO_LARGE) refused a write for
// its size. WriteErrors does not unwrap, so its entries are looked at one
// by one.
func tooLarge(err error) bool {
	var werrs kafkago.WriteErrors
	if errors.As(err, &werrs) {
		for _, e := range werrs {
			if e != nil && tooLarge(e) {
				return true
			}
		}
		return false
	}
	return errors.Is(err, kafkago.MessageSizeTooLarge) || errors.Is(err, kafkago.RecordListTooLarge)
}

// size is what m counts against the writer's BatchBytes, or a little more:
// kafka-go adds 22 bytes of fixed fields and varint lengths (at most 5
// bytes each for sizes under 2 GiB) to the key, value and headers.
func size(m kafkago.Message) int {
	n := 22 + 5 + len(m.Key) + len(m.Value)
	for _, h := range m.Headers {
		n += 10 + len(h.Key) + len(h.Value)
	}
	return n
}

// delayRoom is what a message for topic grows by in a delay tier: the
// target and not-before headers.
func delayRoom(topic string) int {
	return 10 + len(hdrTarget) + len(topic) + 10 + len(hdrNotBefore) + len("-9223372036854775808") // the longest not-before
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

// Ping reports the broker unavailable until its topics exist, then asks
// the cluster for its metadata.
func (b *Broker) Ping(ctx context.Context) error {
	select {
	case <-b.ready:
	default:
		b.mu.Lock()
		err := b.setupErr
		b.mu.Unlock()
		if err == nil {
			err = errors.New("not answered yet")
		}
		return fmt.Errorf("kafka: topics not ready: %w: %v", broker.ErrUnavailable, err)
	}
	if _, err := b.client.Metadata(ctx, &kafkago.MetadataRequest{Topics: []string{b.name(broker.ResultTopic)}}); err != nil {
		return fmt.Errorf("%w: %v", broker.ErrUnavailable, err)
	}
	return nil
}

// Close flushes the writer, after Run returned. Subscriptions are closed
// by their owners first.
func (b *Broker) Close() error {
	return errors.Join(closeWriter(b.w), closeWriter(b.eager))
}

func closeWriter(w *kafkago.Writer) error {
	if err := w.Close(); err != nil {
		return fmt.Errorf("kafka: close writer: %w", err)
	}
	return nil
}
