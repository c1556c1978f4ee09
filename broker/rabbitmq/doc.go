// Package rabbitmq is sluice's RabbitMQ broker, on
// github.com/rabbitmq/amqp091-go. Messages are persistent, carry sluice's
// metadata in AMQP headers and the client's body as the payload. With the
// configured prefix (default "sluice.") it declares:
//
//	<prefix>requests.<backend>   quorum queue; x-delivery-limit, then dead-lettered
//	                             (at least once) into <prefix>dlq-stream.<backend>
//	<prefix>results              quorum queue without delivery limit: no status
//	                             event is ever dropped
//	<prefix>dlq-stream.<backend> stream: dead letters, read by offset
//	<prefix>delay-quorum.<tier>.<topic>
//	                             quorum queue per delay tier of requests.<backend>
//	                             and results, without delivery limit (nobody
//	                             consumes it): x-message-ttl, then dead-lettered
//	                             (at least once) to <prefix><topic>
//
// and, while it upgrades queues, <prefix>upgrade-lock (exclusive to the
// upgrading connection) and <prefix><queue>.migrating (see below).
//
// amqp091-go never reconnects by itself and its channels are not
// goroutine-safe, so the broker holds two connections (publishing and
// consuming apart, so that a resource alarm blocking publishers does not
// stall acknowledgements). Open connects and declares the topology, and
// starts nothing; Broker.Run reconnects with backoff and jitter, declaring
// the topology again, and runs the migrations Open leaves to it. Publishers take confirm-mode channels from a
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
// that stops and waits for it: Run waits for the link's goroutines before
// it returns, and Broker.Close for the subscriptions'.
//
// Poison messages: x-delivery-limit (Options.DeliveryLimit, default 1000)
// counts hand-backs, not retries: a consumer that dies or closes holding a
// message, or a Nack without delay. A request handed back more often is
// dead-lettered to its backend's stream, where the admin API lists and
// replays it. The limit is always positive. "No limit" differs by server
// version, which sluice reads from the connection's server properties:
// RabbitMQ 3.x has none by default and reads a negative one as 0 (drop
// after the first delivery), 4.x defaults quorum queues to 20 and reads -1
// as unlimited. So the results and delay queues get x-delivery-limit -1 on
// 4.0 and later and none on 3.x (and on a server that names no version).
//
// Dead letters live in a stream because reading a stream is not a
// delivery: a dashboard can list them as often as it likes (a quorum queue
// read with basic.get and requeue loses every message after 20 listings on
// 4.x). Positions are stream offsets; taking writes a mark listing them, and
// each read writes a small fence to know where the stream ends (see
// dlq.go). A listing holds metadata only, dropping each body as it reads
// it, so its memory grows with the number of dead letters, not their size;
// ReadDead reads from the smallest offset asked for and keeps only the
// bodies asked for. Nothing in a stream goes away, so the stream grows by a
// fence per read and a mark per replay, and a listing reads it all.
//
// Upgrading from an earlier version, or after an upgrade of RabbitMQ, on
// every connection before it serves (see upgrade in topology.go):
//
//   - A request, results or delay queue that exists with other arguments
//     than today's (an earlier version's, another DeliveryLimit, queues
//     declared on 3.x now running on 4.x) cannot be declared again, so it
//     is migrated in place: a request or results queue's messages move to
//     the quorum queue <queue>.migrating, it is deleted and declared with
//     today's arguments, and they move back; a delay queue's move early
//     into the queue it feeds, whose consumers send each on to the tier
//     its time needs. Every batch is confirmed before its originals are
//     acknowledged, so nothing is lost and a crash duplicates at most a
//     batch; a <queue>.migrating found on a later connection is moved back
//     first. A queue that has consumers (an earlier version still running)
//     is not migrated but used as it is, with a warning, until a start
//     finds nobody consuming it. The processes of one deployment take
//     turns through <prefix>upgrade-lock; one that finds queues to migrate
//     while another holds it connects again later.
//   - Dead letters of the quorum queue <prefix>dlq.<backend> move into the
//     stream and the old queue is deleted.
//   - Classic delay queues <prefix>delay.<tier>.<topic> are deleted once
//     empty (until then they keep forwarding by TTL).
//
// Moving uses basic.get, a round trip per message: a backlog of a million
// messages takes minutes, during which the process does not serve. Stop
// the earlier version's processes before starting this one: a queue is
// deleted once found empty, and what they publish to it in between, or to
// queues that were moved or deleted, is lost.
package rabbitmq
