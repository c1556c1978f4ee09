// Command bench is `make bench`: it measures sluice as a separate process
// next to baselines measured in the same run, compares each figure with its
// goal, prints the goal table, and exits 1 when a goal is missed (or a part
// could not run), so that a regression fails `make bench`.
//
// The parts, each one scenario (-only picks some):
//
//	ingest   sluice (embedded broker, ack: durable) vs a bare fasthttp server
//	         answering 202, and vs the raw JetStream async publisher
//	rate     delivered rate and its smoothness at a configured rate, burst 1
//	retries  successes/s at rate 40, concurrency 4, 503 on every first attempt
//	cpu      sluice CPU time per delivered message
//	overload 10x the connections against a bounded backlog: 503s, bounded RSS
//	kafka    sluice through Kafka (kfake) vs the raw kafka-go writer
//	rabbitmq sluice through RabbitMQ vs the raw amqp091 publisher
//	delivery sluice CPU per delivery at rate 200 on each broker, draining a
//	         backlog vs keeping up with submits at the rate
//	policies ingest with API-key auth, a client rate limit and CORS vs none
//	metrics  ingest with GET /metrics scraped every second vs metrics: false
//	scale    (only when named) 1-3 sluice processes per role on Kafka and
//	         RabbitMQ with Redis: ingest, delivery, a rate held in total
//
// The program is split by concern: load.go is the one load generator every
// part measures with (closed loop, bounded in time and count); scenarios.go
// holds the parts (metrics.go the metrics part); baselines.go the raw broker clients and the bare server;
// procs.go the processes under test and the delivery sink; goals.go the one
// table of goals and its evaluation; report.go the text and -json output.
// Every load loop targets 127.0.0.1 only.
package main
