package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
	"github.com/sluice-gw/sluice/internal/retry"

	"github.com/sluice-gw/sluice/broker"
)

// Options configure the RabbitMQ broker.
type Options struct {
	URL         string   // default DefaultURL
	QueuePrefix string   // default DefaultQueuePrefix
	Backends    []string // request and dead-letter queues of each
	// PublishChannels is the size of the pool of confirm-mode channels.
	// Default DefaultPublishChannels.
	PublishChannels int
	// MaxMessageBytes is the server's max_message_size: larger messages
	// (body and headers) fail with broker.ErrTooLarge before they are sent.
	// Default DefaultMaxMessageBytes (RabbitMQ 4.x's).
	MaxMessageBytes int
	// DeliveryLimit is x-delivery-limit of the request queues: a request
	// handed back this many times without being settled is dead-lettered.
	// Default DefaultDeliveryLimit. The results queue has no limit: a
	// status event is never dropped.
	DeliveryLimit int
	// Log receives what the broker cannot return to a caller: a failed
	// connection attempt (warn), a queue migrated to today's arguments
	// (info) or left as it is, a migration left for the next connection
	// (warn). The zero Logger logs nothing.
	Log zerolog.Logger
}

// Defaults of Options' zero values.
const (
	DefaultURL             = "amqp://guest:guest@127.0.0.1:5672/"
	DefaultQueuePrefix     = "sluice."
	DefaultPublishChannels = 4
	DefaultMaxMessageBytes = 16 << 20
	DefaultDeliveryLimit   = 1000
)

// withDefaults fills o's zero values with their defaults.
func (o Options) withDefaults() Options {
	if o.URL == "" {
		o.URL = DefaultURL
	}
	if o.QueuePrefix == "" {
		o.QueuePrefix = DefaultQueuePrefix
	}
	if o.PublishChannels <= 0 {
		o.PublishChannels = DefaultPublishChannels
	}
	if o.MaxMessageBytes <= 0 {
		o.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if o.DeliveryLimit <= 0 {
		o.DeliveryLimit = DefaultDeliveryLimit
	}
	return o
}

const (
	hdrKey       = "sluice-key"
	hdrNotBefore = "sluice-not-before"
	// hdrSeq numbers a publish on its channel, so that a basic.return (which
	// carries the message, not its delivery tag) finds the publish it
	// belongs to; the message key is not unique per publish.
	hdrSeq = "sluice-publish-seq"
)

// settleTimeout bounds the publishes the broker makes on a consumer's
// behalf (the copy a Nack with a delay writes, a message moving on to a
// smaller delay tier) and the dead-letter fences and marks, whatever
// context the caller passed.
const settleTimeout = 10 * time.Second

// link is one pair of connections and what lives on them. Publishers and
// consumers have a connection each, as RabbitMQ advises: when a resource
// alarm blocks publishing connections, acknowledgements, channel closes and
// listings still go through.
type link struct {
	pub, sub *amqp.Connection
	pool     chan *pubChan // confirm-mode channels of pub
	lost     chan struct{} // closed once the link is gone
	// maxBody is the server's max_message_size once a refusal told it; 0
	// until then. Messages over it are refused before they are sent, so one
	// oversized message does not close a channel per attempt.
	maxBody atomic.Int64

	// inflight counts publishes about to be written or written and not
	// answered yet; while resume is set, no new one starts (see quiet).
	inflight atomic.Int64
	pmu      sync.Mutex
	resume   chan struct{}

	// ctx ends when the link is shut; gmu guards gone and wg.Add.
	ctx    context.Context
	cancel context.CancelFunc
	gmu    sync.Mutex
	gone   bool
	wg     sync.WaitGroup // its goroutines: confirm readers, channel refills
	once   sync.Once
	log    zerolog.Logger
}

// spawn runs f in a goroutine the link owns; it reports false, running
// nothing, once the link is shut.
func (l *link) spawn(f func()) bool {
	l.gmu.Lock()
	defer l.gmu.Unlock()
	if l.gone {
		return false
	}
	l.wg.Go(f)
	return true
}

// shut ends the link, once: publishes waiting for a channel fail, the
// connections close (which fails the publishes awaiting confirms and ends
// the confirm readers), and its goroutines are waited for.
func (l *link) shut() {
	l.once.Do(func() {
		l.gmu.Lock()
		l.gone = true
		l.gmu.Unlock()
		l.cancel()
		close(l.lost)
		l.close()
		l.wg.Wait()
	})
}

// enter counts a publish in, waiting while the link is quiet.
func (l *link) enter(ctx context.Context) error {
	for {
		l.inflight.Add(1)
		l.pmu.Lock()
		r := l.resume
		l.pmu.Unlock()
		if r == nil {
			return nil
		}
		l.inflight.Add(-1)
		select {
		case <-r:
		case <-ctx.Done():
			return ctx.Err()
		case <-l.lost:
			return errors.New("connection lost")
		}
	}
}

// quiet runs f while no publish of this process is on its way: RabbitMQ
// confirms a message routed to a quorum queue that is being created (its
// record is routable before its replicas run) without storing it, so the
// topology is declared again only once every publish sent before was
// answered, and new ones wait until it is done (at most maxWait for the
// answers). Other processes' publishes can still meet the new queue
// half-made; only a queue someone deleted is ever created while sluice
// runs.
func (l *link) quiet(stop <-chan struct{}, maxWait time.Duration, f func()) {
	resume := make(chan struct{})
	l.pmu.Lock()
	l.resume = resume
	l.pmu.Unlock()
	defer func() {
		l.pmu.Lock()
		l.resume = nil
		l.pmu.Unlock()
		close(resume)
	}()
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	deadline := time.Now().Add(maxWait)
	for l.inflight.Load() > 0 && time.Now().Before(deadline) {
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
	f()
}

func (l *link) close() {
	closeConn(l.log, l.pub, "publish")
	closeConn(l.log, l.sub, "consume")
}

// Broker is the RabbitMQ broker. It is safe for concurrent use; no AMQP
// channel is ever used by two goroutines at once.
//
// Open starts no goroutine. Run keeps the connections up and owns what
// lives on them: one confirm reader per publish channel and channel
// refills, which end with their link. The run loop of each subscription is
// counted in wg: it ends with the subscription's Close or the broker's.
type Broker struct {
	opts    Options
	queues  map[string]string // logical topic -> queue or stream
	dead    map[string]string // dead-letter topic -> backend
	targets []string          // topics with delay queues
	timeout time.Duration     // settleTimeout; tests shorten it

	mu          sync.Mutex
	cur         *link           // nil while disconnected; Open's until Run adopts it
	up          chan struct{}   // closed while connected; replaced on loss
	closing     bool            // no new subscriptions once set
	legacyDelay map[string]bool // old delay queues still draining
	warned      map[string]bool

	redeclare chan struct{} // asks Run to declare the topology again
	stop      chan struct{} // closed by Close
	shut      sync.Once
	wg        sync.WaitGroup // subscriptions' run loops
	// counts per topic, made with the topology and read-only after:
	// deliveries held and acknowledgements made by this process.
	counts map[string]*topicCounts
	// movesFailed counts moves to a smaller delay tier that failed and
	// will be tried again.
	movesFailed atomic.Int64
	// deadScanned counts the stream messages dead-letter reads went
	// through.
	deadScanned atomic.Int64
}

var _ broker.Broker = (*Broker)(nil)

// Open connects and declares (and migrates) the topology, trying again
// with backoff until that is done or ctx ends; it starts no goroutine. It
// returns without an error when RabbitMQ stays away: Run connects later,
// and until then publishes fail with broker.ErrUnavailable and
// subscriptions wait. Once connected, Ping, Stats, the dead-letter methods
// and subscriptions work before Run; publishes wait for Run, which opens
// the publish channels.
func Open(ctx context.Context, opts Options) (*Broker, error) {
	b := newBroker(opts)
	// A migration ctx cuts short stops at a consistent point; Run's next
	// connection takes it up again.
	l, err := b.retryConnect(ctx, func() (*link, error) { return b.connect(ctx) })
	if err == nil {
		b.adopt(l)
	}
	return b, nil
}

// newBroker fills defaults and derives the topology of opts.
func newBroker(opts Options) *Broker {
	opts = opts.withDefaults()
	b := &Broker{opts: opts, queues: map[string]string{}, dead: map[string]string{},
		targets: []string{broker.ResultTopic}, timeout: settleTimeout,
		up: make(chan struct{}), redeclare: make(chan struct{}, 1), stop: make(chan struct{}),
		warned: map[string]bool{}}
	b.queues[broker.ResultTopic] = b.name(broker.ResultTopic)
	for _, be := range opts.Backends {
		b.queues[broker.RequestTopic(be)] = b.name(broker.RequestTopic(be))
		b.queues[broker.DeadLetterTopic(be)] = b.deadStream(be)
		b.dead[broker.DeadLetterTopic(be)] = be
		b.targets = append(b.targets, broker.RequestTopic(be))
	}
	b.counts = make(map[string]*topicCounts, len(b.queues))
	for topic := range b.queues {
		b.counts[topic] = &topicCounts{}
	}
	return b
}

// topicCounts are this process's deliveries of one topic.
type topicCounts struct{ held, acked atomic.Int64 }

// countsOf returns topic's counts; a topic outside the topology (which no
// subscription or Stats reaches) gets fresh ones.
func (b *Broker) countsOf(topic string) *topicCounts {
	if c := b.counts[topic]; c != nil {
		return c
	}
	return &topicCounts{}
}

// MaxMessageBytes is the largest message (body and headers) Publish sends.
func (b *Broker) MaxMessageBytes() int { return b.opts.MaxMessageBytes }

// logf logs a warning: something sluice works around or tries again.
func (b *Broker) logf(format string, args ...any) {
	b.opts.Log.Warn().Msgf(format, args...)
}

// infof logs what an upgrade did.
func (b *Broker) infof(format string, args ...any) {
	b.opts.Log.Info().Msgf(format, args...)
}

// closeChannel closes ch, logging a failure other than its being closed
// already (a refusal closes a channel, the connection's loss all of them).
func (b *Broker) closeChannel(ch *amqp.Channel) {
	if err := ch.Close(); err != nil && !errors.Is(err, amqp.ErrClosed) {
		b.opts.Log.Debug().Err(err).Msg("rabbitmq: close channel")
	}
}

// closeConn closes conn, logging a failure other than its being closed
// already.
func (b *Broker) closeConn(conn *amqp.Connection, what string) { closeConn(b.opts.Log, conn, what) }

func closeConn(log zerolog.Logger, conn *amqp.Connection, what string) {
	if err := conn.CloseDeadline(time.Now().Add(5 * time.Second)); err != nil && !errors.Is(err, amqp.ErrClosed) {
		log.Debug().Err(err).Str("connection", what).Msg("rabbitmq: close connection")
	}
}

// warnOnce logs a warning about key once per broker, not on every
// reconnection.
func (b *Broker) warnOnce(key, format string, args ...any) {
	b.mu.Lock()
	seen := b.warned[key]
	b.warned[key] = true
	b.mu.Unlock()
	if !seen {
		b.logf(format, args...)
	}
}

// spawn runs f in a goroutine the broker owns (a subscription's run
// loop); it reports false, running nothing, once Close has begun.
func (b *Broker) spawn(f func()) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closing {
		return false
	}
	b.wg.Go(f)
	return true
}

func (b *Broker) connected() chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.up
}

// current is the live link, nil while disconnected.
func (b *Broker) current() *link {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.cur
}

// askRedeclare has Run declare the topology again: a publish came
// back unroutable or a consumer found its queue gone (someone deleted it).
func (b *Broker) askRedeclare() {
	select {
	case b.redeclare <- struct{}{}:
	default:
	}
}

// Run keeps one link up until ctx ends: it adopts Open's link or connects
// (with backoff and jitter, declaring the topology), opens the publish
// channels, serves the link until a connection closes, and repeats. When
// ctx ends it closes the link and returns once the link's goroutines
// ended. Subscriptions stay, waiting for a link, until they or the broker
// close.
func (b *Broker) Run(ctx context.Context) error {
	l := b.current()
	for {
		if l != nil {
			if err := b.fill(l); err != nil {
				b.logf("rabbitmq: %v (reconnecting)", err)
				b.drop(l)
				l = nil
			}
		}
		if l == nil {
			var err error
			l, err = b.retryConnect(ctx, func() (*link, error) {
				l, err := b.connect(ctx)
				if err != nil {
					return nil, err
				}
				if err := b.fill(l); err != nil {
					l.shut()
					return nil, err
				}
				return l, nil
			})
			if err != nil {
				return nil // ctx ended
			}
			b.adopt(l)
		}
		b.serve(ctx, l)
		b.drop(l)
		l = nil
		if ctx.Err() != nil || b.isClosing() {
			return nil
		}
	}
}

// retryConnect calls connect until it succeeds or ctx ends, logging each
// kind of failure once, not every attempt.
func (b *Broker) retryConnect(ctx context.Context, connect func() (*link, error)) (*link, error) {
	var lastErr string
	return retry.Value(ctx, retry.Backoff(100*time.Millisecond, 5*time.Second), func() (*link, error) {
		l, err := connect()
		if err != nil && err.Error() != lastErr && ctx.Err() == nil {
			b.logf("rabbitmq: %v (retrying)", err)
			lastErr = err.Error()
		}
		return l, err
	})
}

// adopt makes l the live link.
func (b *Broker) adopt(l *link) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cur = l
	close(b.up)
}

// drop shuts l and, if it is the live link, leaves the broker disconnected.
func (b *Broker) drop(l *link) {
	b.mu.Lock()
	if b.cur == l {
		b.cur, b.up = nil, make(chan struct{})
	}
	b.mu.Unlock()
	l.shut()
}

func (b *Broker) isClosing() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closing
}

// dialTimeout bounds a connection's dial and handshake (amqp091's own
// default), or ctx's deadline when that comes first.
const dialTimeout = 30 * time.Second

// dial connects to url under ctx: its end stops the TCP dial, and its
// deadline bounds the AMQP handshake (which amqp091 otherwise gives 30 s,
// whatever the caller's context).
func dial(ctx context.Context, url, name string) (*amqp.Connection, error) {
	return amqp.DialConfig(url, amqp.Config{Heartbeat: 5 * time.Second, Locale: "en_US",
		Properties: amqp.Table{"connection_name": name},
		Dial: func(network, addr string) (net.Conn, error) {
			conn, err := (&net.Dialer{Timeout: dialTimeout}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			deadline := time.Now().Add(dialTimeout)
			if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
				deadline = d
			}
			// Cleared by amqp091 once the handshake is done.
			if err := conn.SetDeadline(deadline); err != nil {
				_ = conn.Close()
				return nil, err
			}
			return conn, nil
		}})
}

// connect opens a link and declares the topology (migrating what earlier
// versions left, see upgrade); ctx ends a migration early. The link's
// publish channels are opened by fill.
func (b *Broker) connect(ctx context.Context) (*link, error) {
	pub, err := dial(ctx, b.opts.URL, "sluice-publish")
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	sub, err := dial(ctx, b.opts.URL, "sluice-consume")
	if err != nil {
		b.closeConn(pub, "publish")
		return nil, fmt.Errorf("connect: %w", err)
	}
	lctx, cancel := context.WithCancel(context.Background())
	l := &link{pub: pub, sub: sub, pool: make(chan *pubChan, b.opts.PublishChannels), lost: make(chan struct{}),
		ctx: lctx, cancel: cancel, log: b.opts.Log}
	// Declared on the consuming connection, which never publishes, so a
	// resource alarm cannot block it.
	major := serverMajor(sub.Properties)
	if major == 0 {
		b.warnOnce("version", "rabbitmq: the server announced no version (%v): sluice declares the results "+
			"and delay queues as for RabbitMQ 3.x, without x-delivery-limit (on 4.x they would drop a message "+
			"at its 20th hand-back)", sub.Properties["version"])
	}
	refused, err := b.declare(sub)
	if err != nil {
		l.shut()
		return nil, err
	}
	if err := b.upgrade(ctx, major, refused); err != nil {
		l.shut()
		return nil, err
	}
	return l, nil
}

// fill opens l's pool of publish channels and their confirm readers.
func (b *Broker) fill(l *link) error {
	for range b.opts.PublishChannels {
		pc, err := b.openPubChan(l)
		if err != nil {
			return fmt.Errorf("open publish channel: %w", err)
		}
		l.pool <- pc
	}
	return nil
}

// serve waits until l breaks, ctx ends or the broker closes, declaring the
// topology again when asked.
func (b *Broker) serve(ctx context.Context, l *link) {
	pubClosed := l.pub.NotifyClose(make(chan *amqp.Error, 1))
	subClosed := l.sub.NotifyClose(make(chan *amqp.Error, 1))
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.stop:
			return
		case <-pubClosed:
			return
		case <-subClosed:
			return
		case <-b.redeclare:
			l.quiet(ctx.Done(), 2*time.Second, func() {
				refused, err := b.declare(l.sub)
				if err != nil {
					b.logf("rabbitmq: declaring the topology again: %v", err)
				}
				for _, r := range refused {
					b.warnOnce(r.name, "rabbitmq: queue %s exists with other arguments than sluice declares (%s); "+
						"sluice uses it as it is and migrates it when it next connects", r.name, r.reason)
				}
			})
		}
	}
}

// withChannel runs f on a fresh channel of the consuming connection.
func (b *Broker) withChannel(f func(*amqp.Channel) error) error {
	l := b.current()
	if l == nil {
		return fmt.Errorf("%w: not connected", broker.ErrUnavailable)
	}
	ch, err := l.sub.Channel()
	if err != nil {
		return fmt.Errorf("%w: %v", broker.ErrUnavailable, err)
	}
	defer b.closeChannel(ch)
	return f(ch)
}

func (b *Broker) held(topic string) *atomic.Int64 { return &b.countsOf(topic).held }

func (b *Broker) ackCount(topic string) *atomic.Int64 { return &b.countsOf(topic).acked }

// Stats counts the queue's ready messages (and its delayed ones, in old
// delay queues too while they drain) plus the deliveries this process
// holds. AMQP does not tell how many a queue has delivered in all, so
// Consumed counts this process's acknowledgements. A dead-letter topic is a
// stream, which has no message count: its Depth is what ListDead would
// return, which costs a read of the stream.
func (b *Broker) Stats(ctx context.Context, topic string) (broker.QueueStats, error) {
	var st broker.QueueStats
	queue, ok := b.queues[topic]
	if !ok {
		return st, fmt.Errorf("rabbitmq: unknown topic %q", topic)
	}
	if be, ok := b.dead[topic]; ok {
		live, err := b.readDead(ctx, be)
		if err != nil {
			return st, fmt.Errorf("stats %s: %w", topic, err)
		}
		st.Depth = int64(len(live))
		return st, nil
	}
	names := []string{queue}
	var legacy []string
	if slices.Contains(b.targets, topic) {
		b.mu.Lock()
		for _, d := range broker.DelayTiers {
			names = append(names, b.delayQueue(d, topic))
			if q := b.legacyDelayQueue(d, topic); b.legacyDelay[q] {
				legacy = append(legacy, q)
			}
		}
		b.mu.Unlock()
	}
	err := b.withChannel(func(ch *amqp.Channel) error {
		for _, n := range names {
			q, err := ch.QueueDeclarePassive(n, true, false, false, false, nil)
			if err != nil {
				return err
			}
			st.Depth += int64(q.Messages)
		}
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("stats %s: %w", topic, err)
	}
	for _, q := range legacy {
		// A passive declare of a queue that is gone closes its channel,
		// hence one channel each (only while an upgrade drains them).
		err := b.withChannel(func(ch *amqp.Channel) error {
			q, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
			st.Depth += int64(q.Messages)
			return err
		})
		var ae *amqp.Error
		if errors.As(err, &ae) && ae.Code == amqp.NotFound {
			b.mu.Lock()
			delete(b.legacyDelay, q)
			b.mu.Unlock()
		}
	}
	st.Depth += b.held(topic).Load()
	st.Consumed = b.ackCount(topic).Load()
	return st, nil
}

// Ping reports whether both connections are up.
func (b *Broker) Ping(context.Context) error {
	l := b.current()
	if l == nil || l.pub.IsClosed() || l.sub.IsClosed() {
		return broker.ErrUnavailable
	}
	return nil
}

// Close, after Run returned, closes the connections Run left (Open's, when
// Run never ran) and waits for the subscriptions' goroutines. Every Publish
// returns by then: confirmed, or failed with broker.ErrUnavailable when
// the connection closed before its confirm.
func (b *Broker) Close() error {
	b.shut.Do(func() {
		b.mu.Lock()
		b.closing = true
		l := b.cur
		b.mu.Unlock()
		close(b.stop)
		if l != nil {
			b.drop(l)
		}
	})
	b.wg.Wait()
	return nil
}

// DeleteQueues removes every queue a broker with opts declares: request,
// result and delay queues, dead-letter streams, and what earlier versions
// declared under other names. For tearing a deployment down (and for
// tests); it deletes queued messages with them.
func DeleteQueues(opts Options) error {
	b := newBroker(opts)
	conn, err := amqp.Dial(b.opts.URL)
	if err != nil {
		return err
	}
	defer b.closeConn(conn, "delete")
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer b.closeChannel(ch)
	for _, q := range b.queueNames() {
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			return fmt.Errorf("delete %s: %w", q, err)
		}
	}
	return nil
}
