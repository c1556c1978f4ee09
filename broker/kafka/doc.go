// Package kafka is sluice's Kafka broker, on github.com/segmentio/kafka-go.
// Topics are <prefix>requests.<backend>, <prefix>results and
// <prefix>dlq.<backend>, created with the configured partition count when
// missing. Messages carry sluice's metadata in Kafka headers and the client's
// body as the raw value, so other Kafka tools can read them.
//
// Publishing waits for acks from all in-sync replicas; concurrent publishes
// share the writer's batches. Consumers use consumer groups (FetchMessage,
// then CommitMessages of the highest offset below which every message is
// settled), so a crash redelivers and never skips. A held-back message goes
// through delay-tier topics (<prefix>delay.<d>) and never blocks a partition.
package kafka
