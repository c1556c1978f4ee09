// Package kafka is sluice's Kafka broker, on github.com/segmentio/kafka-go.
// Topics are <prefix>requests.<backend>, <prefix>results and
// <prefix>dlq.<backend>, plus <prefix>delay.<d> for held-back messages and
// <prefix>dlq-taken for dead letters taken out for replay. Messages carry
// sluice's metadata in Kafka headers and the client's body as the raw
// value, so other Kafka tools can read them.
//
// Topics are created when missing, with the configured partition count,
// replication factor, min.insync.replicas, retention.ms (dead letters kept
// forever by default) and max.message.bytes; topics that exist keep their
// partitions and replicas but get the last three corrected at start. Open
// does not wait for a Kafka that is not up: everything is created and
// corrected once it answers, and until then the broker reports itself
// unavailable.
//
// One size limit, MaxMessageBytes, holds end to end: Publish refuses a
// larger message (broker.ErrTooLarge, counted with room for the headers a
// delay tier adds, so that a message taken can always be nacked), the
// writer batches up to it, topics take it plus Kafka's batch framing, and
// every reader fetches that much at once. A refusal by Kafka for size is
// broker.ErrTooLarge as well; anything else is broker.ErrUnavailable.
//
// Publishing waits for acks from all in-sync replicas; concurrent publishes
// share the writer's batches. Consumers use consumer groups (FetchMessage,
// then CommitMessages of the highest offset below which every message is
// settled), so a crash redelivers and never skips. A held-back message goes
// through delay-tier topics and never blocks a partition: each tier is
// FIFO; the tiers are forwarded by one consumer group shared by every
// process.
//
// Every goroutine has an owner that stops and waits for it: Broker.Run owns
// the topic preparation Open could not finish and the forwarders, and
// returns once they have stopped; a subscription owns its reader's
// start, its commit loop and the republishers of Nacks Kafka could not take
// at once.
package kafka
