// Package rabbitmq is sluice's RabbitMQ broker, on
// github.com/rabbitmq/amqp091-go. Messages are persistent, carry sluice's
// metadata in AMQP headers and the client's body as the payload. With the
// configured prefix (default "sluice.") it declares:
//
//	<prefix>requests.<backend>   quorum queue; x-delivery-limit, then dead-lettered
//	                             (at least once) into <prefix>dlq-stream.<backend>
//	<prefix>results              quorum queue; x-delivery-limit, then dropped
//	<prefix>dlq-stream.<backend> stream: dead letters, read by offset
//	<prefix>delay-quorum.<tier>.<topic>
//	                             quorum queue per delay tier of requests.<backend>
//	                             and results: x-message-ttl, then dead-lettered
//	                             (at least once) to <prefix><topic>
//
// amqp091-go never reconnects by itself and its channels are not
// goroutine-safe, so a manager goroutine owns two connections (publishing
// and consuming apart, so that a resource alarm blocking publishers does
// not stall acknowledgements), reconnecting with backoff and jitter and
// declaring the topology again. Publishers take confirm-mode channels from a
// pool and publish with mandatory set: a message no queue takes comes back
// as a basic.return and fails instead of being confirmed into nothing. A
// per-publish number in a header ties each return to its publish; one
// goroutine per channel reads returns and confirms in the order the server
// sent them. A channel the server closes (a message over its
// max_message_size) is replaced, and the size it named is then enforced
// before sending. Each subscription owns its consumer channel.
//
// Held-back messages wait in the delay queues, never blocking their queue;
// one back early from a tier moves on to a smaller tier, and one due within
// the smallest tier waits in its consumer. Every goroutine has an owner
// that stops and waits for it: Broker.Close waits for all of them, the
// subscriptions' included.
//
// Poison messages: x-delivery-limit (Options.DeliveryLimit, default 100)
// counts hand-backs, not retries: a consumer that dies or closes holding a
// message, or a Nack without delay. A request handed back more often is
// dead-lettered to its backend's stream, where the admin API lists and
// replays it. The limit is always positive: RabbitMQ 3.x reads a negative
// one as 0 (drop after the first delivery) while 4.x reads -1 as unlimited,
// so sluice sends the same explicit limit to both.
//
// Dead letters live in a stream because reading a stream is not a
// delivery: a dashboard can list them as often as it likes (a quorum queue
// read with basic.get and requeue loses every message after 20 listings on
// 4.x). Positions are stream offsets; taking writes a mark listing them, and
// each listing writes a small fence to know where the stream ends (see
// dlq.go). Nothing in a stream goes away, so the stream grows by a fence per
// listing and a mark per replay, and a listing reads it all.
//
// Upgrading from an earlier version: its dead letters (quorum queue
// <prefix>dlq.<backend>) are moved into the stream on the first
// connection and the old queue is deleted; its classic delay queues
// <prefix>delay.<tier>.<topic> are deleted once empty (until then they keep
// forwarding by TTL). Request and result queues keep their names; one
// declared without today's arguments cannot be redeclared, so it is used as
// it is and Options.Logf names the policy that would add them. Stop the
// earlier version's processes before starting this one: what they publish
// to queues that were moved or deleted is lost.
package rabbitmq
