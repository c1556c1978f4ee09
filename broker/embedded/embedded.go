package embedded

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/sluice-gw/sluice/internal/retry"

	"github.com/sluice-gw/sluice/broker"
)

// Options configure the embedded broker.
type Options struct {
	Dir      string   // where JetStream keeps its files
	Backends []string // one request and one dead-letter stream each
	// AckWait is how long a delivery may stay unsettled before it is handed
	// out again. Default DefaultAckWait.
	AckWait time.Duration
	// PublishWindow bounds publishes awaiting confirmation. Default
	// DefaultPublishWindow.
	PublishWindow int
	// Conns is how many in-process connections share the publishes, so the
	// server parses them in parallel. Default DefaultConns.
	Conns int
	// MaxMessageBytes is the largest message (body and headers) the broker
	// takes; larger ones fail with broker.ErrTooLarge. Default and most
	// MaxPayload (NATS' limit).
	MaxMessageBytes int
	// SyncAlways makes JetStream fsync every write before it confirms it.
	// Otherwise it fsyncs every SyncInterval (default DefaultSyncInterval,
	// JetStream's own default): a 202 then survives a crash of the process
	// but not a power loss within the interval.
	SyncAlways   bool
	SyncInterval time.Duration
	// Log receives what the broker cannot return to a caller. The zero
	// Logger logs nothing.
	Log zerolog.Logger
}

// Defaults of Options' zero values.
const (
	DefaultAckWait       = 5 * time.Minute
	DefaultPublishWindow = 4096
	DefaultConns         = 2
	DefaultSyncInterval  = 2 * time.Minute
)

// MaxPayload is the largest message NATS can carry, and the default of
// Options.MaxMessageBytes.
const MaxPayload = 64 << 20

// withDefaults fills o's zero values with their defaults.
func (o Options) withDefaults() Options {
	if o.AckWait <= 0 {
		o.AckWait = DefaultAckWait
	}
	if o.PublishWindow <= 0 {
		o.PublishWindow = DefaultPublishWindow
	}
	if o.Conns <= 0 {
		o.Conns = DefaultConns
	}
	if o.MaxMessageBytes <= 0 || o.MaxMessageBytes > MaxPayload {
		o.MaxMessageBytes = MaxPayload
	}
	if o.SyncInterval <= 0 {
		o.SyncInterval = DefaultSyncInterval
	}
	return o
}

const (
	consumerName = "sluice"
	hdrNotBefore = "sluice-not-before"
	hdrKey       = "sluice-key"
)

// Broker is the embedded JetStream broker. It is safe for concurrent use.
type Broker struct {
	opts     Options
	ns       *server.Server
	nc       *nats.Conn
	js       jetstream.JetStream
	pubs     []*publisher // one per connection, round robin
	next     atomic.Uint32
	streams  map[string]jetstream.Stream // by topic; fixed after Open
	subjects map[string]string           // by topic; fixed after Open
}

var _ broker.Broker = (*Broker)(nil)

// Open starts the JetStream server in dir, connects to it in-process and
// declares the streams of opts.Backends. The server and the NATS client run
// goroutines of their own; sluice's embedded broker has none besides them,
// so it works fully before Run.
func Open(ctx context.Context, opts Options) (*Broker, error) {
	opts = opts.withDefaults()
	ns, err := server.NewServer(&server.Options{
		ServerName:         "sluice-embedded",
		DontListen:         true,
		JetStream:          true,
		StoreDir:           opts.Dir,
		JetStreamMaxMemory: 64 << 20,
		NoSigs:             true,
		NoLog:              true,
		MaxPayload:         int32(opts.MaxMessageBytes),
		MaxPending:         2 * MaxPayload,
		SyncAlways:         opts.SyncAlways,
		SyncInterval:       opts.SyncInterval,
	})
	if err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("embedded broker: server in %s not ready after 30s", opts.Dir)
	}
	nc, err := nats.Connect("", nats.InProcessServer(ns), nats.Name("sluice"),
		nats.MaxReconnects(-1))
	if err != nil {
		ns.Shutdown()
		return nil, fmt.Errorf("embedded broker: connect: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		ns.Shutdown()
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	b := &Broker{opts: opts, ns: ns, nc: nc, js: js, streams: map[string]jetstream.Stream{}, subjects: map[string]string{}}
	window := max(1, opts.PublishWindow/opts.Conns)
	for i := range opts.Conns {
		pnc := nc
		if i > 0 {
			pnc, err = nats.Connect("", nats.InProcessServer(ns), nats.Name("sluice-publisher"), nats.MaxReconnects(-1))
			if err != nil {
				b.Close()
				return nil, fmt.Errorf("embedded broker: connect: %w", err)
			}
		}
		p, err := newPublisher(pnc, window)
		if err != nil {
			if pnc != nc {
				pnc.Close()
			}
			b.Close()
			return nil, fmt.Errorf("embedded broker: %w", err)
		}
		b.pubs = append(b.pubs, p)
	}
	if err := b.declare(ctx); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// streamName maps a topic ("requests.logs") to a stream name ("REQUESTS_logs").
func streamName(topic string) string {
	kind, rest, _ := strings.Cut(topic, ".")
	if rest == "" {
		return strings.ToUpper(kind)
	}
	return strings.ToUpper(kind) + "_" + rest
}

func subject(topic string) string { return "sluice." + topic }

func (b *Broker) declare(ctx context.Context) error {
	type decl struct {
		topic string
		queue bool // work queue with a consumer
	}
	decls := []decl{{broker.ResultTopic, true}}
	for _, be := range b.opts.Backends {
		decls = append(decls, decl{broker.RequestTopic(be), true}, decl{broker.DeadLetterTopic(be), false})
	}
	for _, d := range decls {
		cfg := jetstream.StreamConfig{
			Name:      streamName(d.topic),
			Subjects:  []string{subject(d.topic)},
			Storage:   jetstream.FileStorage,
			Retention: jetstream.LimitsPolicy,
		}
		if d.queue {
			cfg.Retention = jetstream.WorkQueuePolicy
		}
		s, err := b.js.CreateOrUpdateStream(ctx, cfg)
		if err != nil {
			return fmt.Errorf("embedded broker: declare %s: %w", d.topic, err)
		}
		b.streams[d.topic], b.subjects[d.topic] = s, subject(d.topic)
		if !d.queue {
			continue
		}
		// A fresh consumer hands out everything still in the work queue, so
		// what the previous process left unacknowledged comes again now
		// instead of after its ack deadline.
		if err := s.DeleteConsumer(ctx, consumerName); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return fmt.Errorf("embedded broker: reset consumer of %s: %w", d.topic, err)
		}
		_, err = s.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
			Durable:       consumerName,
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       b.opts.AckWait,
			MaxAckPending: 1 << 20,
			MaxDeliver:    -1,
			DeliverPolicy: jetstream.DeliverAllPolicy,
		})
		if err != nil {
			return fmt.Errorf("embedded broker: consumer of %s: %w", d.topic, err)
		}
	}
	return nil
}

// Run returns when ctx ends: the embedded broker has no background work of
// its own (JetStream redelivers and holds back messages by itself).
func (b *Broker) Run(ctx context.Context) error {
	<-ctx.Done()
	return nil
}

func (b *Broker) stream(topic string) (jetstream.Stream, error) {
	s, ok := b.streams[topic]
	if !ok {
		return nil, fmt.Errorf("embedded broker: unknown topic %q", topic)
	}
	return s, nil
}

// Publish writes msg and waits for JetStream's acknowledgement, which comes
// after the message is written to the stream's file. Publishes from many
// goroutines are pipelined on Options.Conns connections.
func (b *Broker) Publish(ctx context.Context, topic string, msg broker.Message) error {
	subj, ok := b.subjects[topic]
	if !ok {
		return fmt.Errorf("embedded broker: unknown topic %q", topic)
	}
	// One backing array for the header values, not one slice each.
	n := len(msg.Headers) + 2
	vals := make([]string, 0, n)
	h := make(nats.Header, n)
	set := func(k, v string) {
		vals = append(vals, v)
		h[k] = vals[len(vals)-1 : len(vals) : len(vals)]
	}
	for k, v := range msg.Headers {
		set(k, v)
	}
	set(hdrKey, msg.Key)
	if !msg.NotBefore.IsZero() {
		set(hdrNotBefore, strconv.FormatInt(msg.NotBefore.UnixNano(), 10))
	}
	m := &nats.Msg{Subject: subj, Header: h, Data: msg.Body}
	p := b.pubs[int(b.next.Add(1))%len(b.pubs)]
	if err := p.publish(ctx, m); err != nil {
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			return fmt.Errorf("publish %s: %w: %v", topic, broker.ErrUnavailable, err)
		}
		return publishError(topic, err)
	}
	return nil
}

// publishError classifies a failed publish: too large, or unavailable.
func publishError(topic string, err error) error {
	var apiErr *jetstream.APIError
	if errors.Is(err, nats.ErrMaxPayload) ||
		(errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum) {
		return fmt.Errorf("publish %s: %w: %v", topic, broker.ErrTooLarge, err)
	}
	return fmt.Errorf("publish %s: %w: %v", topic, broker.ErrUnavailable, err)
}

// MaxMessageBytes is the largest message Publish takes.
func (b *Broker) MaxMessageBytes() int { return b.opts.MaxMessageBytes }

// Subscribe opens a pull subscription through the shared consumer. It
// pulls only when Fetch asks, so nothing waits in a client-side buffer with
// its ack deadline running.
func (b *Broker) Subscribe(ctx context.Context, topic string, _ broker.SubscribeOptions) (broker.Subscription, error) {
	s, err := b.stream(topic)
	if err != nil {
		return nil, err
	}
	cons, err := s.Consumer(ctx, consumerName)
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", topic, err)
	}
	return &subscription{cons: cons, topic: topic, closed: make(chan struct{}), log: b.opts.Log}, nil
}

type subscription struct {
	cons   jetstream.Consumer
	topic  string
	closed chan struct{}
	once   sync.Once
	log    zerolog.Logger
}

// maxPullWait bounds one blocking pull, so Close and ctx are noticed.
const maxPullWait = time.Second

// Fetch takes what is ready now; when nothing is, it waits for one message.
// A message held back until later goes back to JetStream with the remaining
// delay, so it waits there without blocking anything.
func (s *subscription) Fetch(ctx context.Context, max int) ([]broker.Delivery, error) {
	again := retry.Backoff(100*time.Millisecond, 500*time.Millisecond) // after a failed pull; the connection recovers by itself
	for {
		select {
		case <-s.closed:
			return nil, broker.ErrClosed
		case <-ctx.Done():
			return nil, ctx.Err()
		default:
		}
		out, err := s.pull(max, 0)
		if err == nil && len(out) == 0 {
			wait := maxPullWait
			if dl, ok := ctx.Deadline(); ok {
				wait = min(wait, time.Until(dl))
			}
			if wait < time.Millisecond {
				return nil, context.DeadlineExceeded
			}
			if out, err = s.pull(1, wait); err == nil && len(out) > 0 && max > 1 {
				more, merr := s.pull(max-1, 0)
				if merr != nil { // what the first pull got is returned alone
					s.log.Debug().Err(merr).Str("topic", s.topic).Msg("embedded broker: pull more")
				}
				out = append(out, more...)
			}
		}
		if err != nil {
			next := again.NextBackOff()
			s.log.Debug().Err(err).Str("topic", s.topic).Dur("retry_in", next).Msg("embedded broker: pull")
			t := time.NewTimer(next)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, ctx.Err()
			case <-s.closed:
				t.Stop()
				return nil, broker.ErrClosed
			case <-t.C:
			}
			continue
		}
		if len(out) > 0 {
			return out, nil
		}
	}
}

// pull fetches up to n messages, waiting up to wait (0: only what is ready).
func (s *subscription) pull(n int, wait time.Duration) ([]broker.Delivery, error) {
	var batch jetstream.MessageBatch
	var err error
	if wait > 0 {
		batch, err = s.cons.Fetch(n, jetstream.FetchMaxWait(wait))
	} else {
		batch, err = s.cons.FetchNoWait(n)
	}
	if err != nil {
		return nil, err
	}
	var out []broker.Delivery
	now := time.Now()
	for m := range batch.Messages() {
		if nb := m.Headers().Get(hdrNotBefore); nb != "" {
			if ns, err := strconv.ParseInt(nb, 10, 64); err == nil {
				if until := time.Unix(0, ns).Sub(now); until > time.Millisecond {
					// Not handed back: its ack deadline hands it out again.
					if err := m.NakWithDelay(until); err != nil {
						s.log.Warn().Err(err).Str("topic", s.topic).Msg("embedded broker: hold back a message")
					}
					continue
				}
			}
		}
		out = append(out, &delivery{m: m})
	}
	if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && len(out) == 0 {
		return nil, err
	}
	return out, nil
}

func (s *subscription) Close() error {
	s.once.Do(func() { close(s.closed) })
	return nil
}

type delivery struct {
	m jetstream.Msg
}

func (d *delivery) Message() broker.Message { return toMessage(d.m.Headers(), d.m.Data()) }

func toMessage(h nats.Header, body []byte) broker.Message {
	msg := broker.Message{Headers: make(map[string]string, len(h)), Body: body}
	for k, v := range h {
		switch {
		case len(v) == 0 || k == hdrNotBefore:
		case k == hdrKey:
			msg.Key = v[0]
		default:
			msg.Headers[k] = v[0]
		}
	}
	return msg
}

func (d *delivery) Ack(context.Context) error { return d.m.Ack() }

func (d *delivery) Nack(_ context.Context, delay time.Duration) error {
	if delay > 0 {
		return d.m.NakWithDelay(delay)
	}
	return d.m.Nak()
}

// Stats reads the stream's message count and last sequence.
func (b *Broker) Stats(ctx context.Context, topic string) (broker.QueueStats, error) {
	s, err := b.stream(topic)
	if err != nil {
		return broker.QueueStats{}, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return broker.QueueStats{}, fmt.Errorf("stats %s: %w: %v", topic, broker.ErrUnavailable, err)
	}
	st := info.State
	return broker.QueueStats{Depth: int64(st.Msgs), Consumed: int64(st.LastSeq) - int64(st.Msgs)}, nil
}

// ListDead returns the oldest limit dead letters of topic; a position is a
// stream sequence number. Reading by sequence consumes nothing.
func (b *Broker) ListDead(ctx context.Context, topic string, limit int) ([]broker.DeadLetter, error) {
	s, err := b.stream(topic)
	if err != nil {
		return nil, err
	}
	var out []broker.DeadLetter
	seq := uint64(1)
	for limit <= 0 || len(out) < limit {
		raw, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject(topic)))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w: %v", topic, broker.ErrUnavailable, err)
		}
		out = append(out, broker.DeadLetter{Message: toMessage(raw.Header, nil),
			Pos: strconv.FormatUint(raw.Sequence, 10)})
		seq = raw.Sequence + 1
	}
	return out, nil
}

// ReadDead reads the dead letters at the given sequence numbers.
func (b *Broker) ReadDead(ctx context.Context, topic string, pos []string) ([]broker.DeadLetter, error) {
	s, err := b.stream(topic)
	if err != nil {
		return nil, err
	}
	out := make([]broker.DeadLetter, 0, len(pos))
	for _, p := range pos {
		seq, err := strconv.ParseUint(p, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("read %s: bad position %q", topic, p)
		}
		raw, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // taken meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w: %v", topic, broker.ErrUnavailable, err)
		}
		out = append(out, broker.DeadLetter{Message: toMessage(raw.Header, raw.Data), Pos: p})
	}
	return out, nil
}

// TakeDead deletes the dead letters at the given sequence numbers.
func (b *Broker) TakeDead(ctx context.Context, topic string, pos []string) error {
	s, err := b.stream(topic)
	if err != nil {
		return err
	}
	for _, p := range pos {
		seq, err := strconv.ParseUint(p, 10, 64)
		if err != nil {
			return fmt.Errorf("take %s: bad position %q", topic, p)
		}
		err = s.DeleteMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgDeleteUnsuccessful) {
			// Taken already? JetStream's error text varies; ask.
			if _, gerr := s.GetMsg(ctx, seq); errors.Is(gerr, jetstream.ErrMsgNotFound) {
				continue
			}
		}
		if err != nil {
			return fmt.Errorf("take %s: %w: %v", topic, broker.ErrUnavailable, err)
		}
	}
	return nil
}

// Ping checks the connection and JetStream.
func (b *Broker) Ping(ctx context.Context) error {
	if !b.nc.IsConnected() {
		return broker.ErrUnavailable
	}
	if _, err := b.js.AccountInfo(ctx); err != nil {
		return fmt.Errorf("%w: %v", broker.ErrUnavailable, err)
	}
	return nil
}

// Close waits for pending publishes (at most 5s), then stops the server.
// Publishes still waiting for their confirm then fail.
func (b *Broker) Close() error {
	for _, p := range b.pubs {
		if !p.drain(5 * time.Second) {
			b.opts.Log.Warn().Int("pending", p.waiting()).
				Msg("embedded broker: closing with publishes unconfirmed after 5s")
		}
		p.nc.Close()
		p.failAll(fmt.Errorf("%w: broker closed", broker.ErrUnavailable))
	}
	b.nc.Close()
	b.ns.Shutdown()
	b.ns.WaitForShutdown()
	return nil
}
