// Package rabbitmq is sluice's RabbitMQ broker, on
// github.com/rabbitmq/amqp091-go. Each topic is a durable quorum queue named
// with the configured prefix; messages are persistent, carry sluice's
// metadata in AMQP headers and the client's body as the payload.
//
// amqp091-go never reconnects by itself and its channels are not
// goroutine-safe, so a manager goroutine owns the connection (reconnecting
// with backoff and jitter, redeclaring the topology), publishers take
// confirm-mode channels from a pool and wait for deferred confirms, and each
// subscription owns its consumer channel. Held-back messages wait in
// per-tier delay queues (a fixed message TTL, dead-lettered back to their
// queue), never blocking the queue itself.
package rabbitmq
