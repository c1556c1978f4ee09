package broker

import (
	"context"
	"errors"
	"time"
)

// ErrUnavailable reports that the broker cannot take or hand out messages
// right now (down, disconnected, full or timed out). Callers answer 503.
var ErrUnavailable = errors.New("broker unavailable")

// ErrClosed reports use of a closed subscription or broker.
var ErrClosed = errors.New("broker closed")

// ErrTooLarge reports a message the broker refuses for its size. Retrying
// cannot help: callers answer 413 or store a smaller outcome instead.
var ErrTooLarge = errors.New("message too large for the broker")

// Overhead is the room a request message needs beside its body (sluice's
// headers, the client's forwarded headers, the broker's own framing). A
// broker that carries MaxMessageBytes carries bodies of MaxMessageBytes -
// Overhead.
const Overhead = 128 << 10

// RequestTopic is the topic of requests waiting for backend.
func RequestTopic(backend string) string { return "requests." + backend }

// DeadLetterTopic is the topic of backend's dead letters.
func DeadLetterTopic(backend string) string { return "dlq." + backend }

// ResultTopic carries status events to the collector.
const ResultTopic = "results"

// Message is what travels through a topic. Headers carry sluice's metadata,
// Body the client's bytes untouched, so other tools can read the topics.
type Message struct {
	// Key identifies the message (the request id). Brokers use it for
	// partitioning and to find dead letters again.
	Key     string
	Headers map[string]string
	Body    []byte
	// NotBefore, when set, holds the message back until then. A held-back
	// message never delays the messages behind it.
	NotBefore time.Time
}

// Publisher writes messages. It is safe for concurrent use; concurrent calls
// share flushes, so many small publishes cost about one round trip.
type Publisher interface {
	// Publish returns nil only once the broker confirmed msg durably. It
	// returns an error wrapping ErrUnavailable when the broker cannot take it
	// before ctx ends (a transient failure: the message may or may not have
	// landed), and one wrapping ErrTooLarge when the broker refuses it for
	// its size (permanent). Either way the publisher stays usable.
	Publish(ctx context.Context, topic string, msg Message) error
}

// Delivery is one message handed to a consumer. Exactly one of Ack or Nack
// must be called, from any goroutine; until then the broker holds the message
// for this consumer and hands it out again only if the consumer dies or stays
// silent past its ack deadline.
type Delivery interface {
	Message() Message
	// Ack removes the message from its topic.
	Ack(ctx context.Context) error
	// Nack returns the message to its topic, to be delivered again after
	// delay. It does not change the message.
	Nack(ctx context.Context, delay time.Duration) error
}

// Redeliverer is implemented by deliveries that know for sure whether the
// broker handed the message out before (AMQP's redelivered flag). A
// delivery that does not implement it may have been handed out before:
// the embedded broker recreates its consumers at start, which resets
// JetStream's delivery counts.
type Redeliverer interface {
	Redelivered() bool
}

// Subscriber opens competing-consumer subscriptions: every subscription of a
// topic in every process shares its messages, each message going to one of
// them at a time.
type Subscriber interface {
	Subscribe(ctx context.Context, topic string, opts SubscribeOptions) (Subscription, error)
}

// SubscribeOptions tune a subscription.
type SubscribeOptions struct {
	// Prefetch is how many messages may wait in the subscription's buffer
	// ahead of Fetch. Zero means a small default.
	Prefetch int
}

// Subscription is a stream of deliveries. Fetch may be called from one
// goroutine at a time; the deliveries it returns may be settled from any.
type Subscription interface {
	// Fetch blocks until at least one message is ready or ctx ends, then
	// returns up to max messages that are ready now.
	Fetch(ctx context.Context, max int) ([]Delivery, error)
	// Close stops fetching; buffered, unreturned messages go back to the
	// topic at once. Callers settle every delivery Fetch returned before
	// they call Close (stop fetching, settle what is in flight, then
	// close): one settled after Close may be delivered again.
	Close() error
}

// Pauser is implemented by subscriptions that hold messages fetched ahead
// at the broker (RabbitMQ's prefetch). Pause hands them back and stops the
// flow until Resume, so a paused backend's messages are not held unsettled
// (and counted as deliveries, or timed out) for as long as the pause
// lasts. Deliveries already returned by Fetch stay valid. Pause and Resume
// are called from the goroutine that calls Fetch.
type Pauser interface {
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
}

// Sharer is implemented by subscriptions whose topic is split among
// several processes (Kafka consumer groups): Share is this subscription's
// fraction of the topic (0..1), so per-backend limits can be divided so
// that they hold in total across processes.
type Sharer interface {
	Share(ctx context.Context) (float64, error)
}

// QueueStats describes one topic's backlog.
type QueueStats struct {
	// Depth counts messages not yet acknowledged, held-back retries included.
	Depth int64
	// Consumed counts messages acknowledged since the topic was created; its
	// change over time is the drain rate.
	Consumed int64
}

// DeadLetter is one message of a dead-letter topic and where it sits there.
type DeadLetter struct {
	Message
	// Pos identifies this copy of the message in its topic (a sequence
	// number, an offset): the same key may sit there more than once, say
	// after a replay failed again.
	Pos string
}

// DeadLetters reads and takes messages out of a dead-letter topic. Reading
// never consumes or redelivers anything: listing as often as a dashboard
// polls changes nothing in the topic.
type DeadLetters interface {
	// ListDead returns up to limit (all when limit <= 0) dead letters of
	// topic that were not taken, oldest first, without their bodies (Body
	// is nil): a listing holds metadata only, however large the requests.
	ListDead(ctx context.Context, topic string, limit int) ([]DeadLetter, error)
	// ReadDead returns the dead letters at positions pos, bodies included,
	// in the order of pos; a position taken meanwhile is left out.
	ReadDead(ctx context.Context, topic string, pos []string) ([]DeadLetter, error)
	// TakeDead removes exactly the dead letters at positions pos, as
	// ListDead returned them; positions already taken are ignored. Messages
	// that arrived after the listing stay, even with the same key. The
	// caller republishes what it takes before it calls TakeDead, so a crash
	// in between duplicates, never loses.
	TakeDead(ctx context.Context, topic string, pos []string) error
}

// Broker is everything one broker kind provides.
//
// A kind's Open connects and declares its topics synchronously, as far as
// the broker answers before Open's ctx ends, and starts none of sluice's
// goroutines. Run starts the broker's own background work (reconnecting,
// finishing the declarations Open could not, moving held-back messages on)
// and owns it until its ctx ends. The other methods may be called once Run
// has been started, from any goroutine; before that a kind may serve them
// or fail them with ErrUnavailable, but nothing moves in the background.
// Close comes last: after Run returned (or when Run never ran), and after
// every subscription was closed.
type Broker interface {
	Publisher
	Subscriber
	DeadLetters
	// Run runs the broker's background work until ctx ends, then returns
	// once all of it stopped. It returns nil when ctx ended, an error only
	// when the broker cannot go on. Call it once.
	Run(ctx context.Context) error
	// Stats reports topic's backlog.
	Stats(ctx context.Context, topic string) (QueueStats, error)
	// Ping reports whether the broker is reachable.
	Ping(ctx context.Context) error
	// Close flushes pending publishes and releases the connection.
	Close() error
}
