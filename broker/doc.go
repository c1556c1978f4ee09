// Package broker defines the queue that sits between sluice's roles: the
// interfaces every broker kind (embedded JetStream, Kafka, RabbitMQ)
// implements, and the names of the topics sluice uses. It is a leaf package:
// no broker library type crosses out of broker/<kind>.
//
// Topics are logical names; each kind maps them to its own streams, topics or
// queues with its configured prefix:
//
//	requests.<backend>  requests waiting for delivery to <backend>
//	results             status events, read by the collector
//	dlq.<backend>       requests whose retries ran out
package broker
