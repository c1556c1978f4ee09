package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	amqp "github.com/rabbitmq/amqp091-go"
	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/valyala/fasthttp"
)

// ---- the bare fasthttp baseline, run as a child (-bare-server) ----

// serveBare answers every request with a 202 shaped like sluice's, storing
// nothing: the fastest an HTTP front end on fasthttp can be.
func serveBare(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr().String())
	var n atomic.Uint64
	return (&fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		_ = ctx.PostBody()
		id := strconv.FormatUint(n.Add(1), 36)
		ctx.SetStatusCode(202)
		ctx.SetContentType("application/json")
		ctx.Response.Header.Set("Location", "/v1/requests/"+id)
		ctx.SetBodyString(`{"id":"` + id + `","status":"queued","status_url":"/v1/requests/` + id + `"}`)
	}}).Serve(ln)
}

// ---- kfake, run as a child (-kfake-server) ----

func serveKfake() error {
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		return err
	}
	fmt.Println(c.ListenAddrs()[0])
	select {}
}

// ---- raw broker clients ----

// jetStreamPublish returns an op publishing 1 KiB asynchronously to an
// in-process JetStream file stream and waiting for its ack, like a submit;
// close releases the server.
func jetStreamPublish() (o op, close func(), err error) {
	dir, err := os.MkdirTemp("", "bench-js")
	if err != nil {
		return nil, nil, fmt.Errorf("make temporary directory: %w", err)
	}
	ns, err := server.NewServer(&server.Options{DontListen: true, JetStream: true, StoreDir: dir, NoSigs: true})
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, nil, fmt.Errorf("start JetStream: %w", err)
	}
	ns.Start()
	close = func() { ns.Shutdown(); ns.WaitForShutdown(); _ = os.RemoveAll(dir) }
	ns.ReadyForConnections(10 * time.Second)
	nc, err := nats.Connect("", nats.InProcessServer(ns))
	if err != nil {
		close()
		return nil, nil, fmt.Errorf("connect to JetStream: %w", err)
	}
	closeServer := close
	close = func() { nc.Close(); closeServer() }
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err == nil {
		_, err = js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "B", Subjects: []string{"b"},
			Storage: jetstream.FileStorage, Retention: jetstream.WorkQueuePolicy})
	}
	if err != nil {
		close()
		return nil, nil, fmt.Errorf("create stream: %w", err)
	}
	return func() (int, error) {
		m := nats.NewMsg("b")
		m.Header["sluice-id"] = []string{"x"}
		m.Data = payload
		f, err := js.PublishMsgAsync(m)
		if err != nil {
			return 0, err
		}
		select {
		case <-f.Ok():
			return 200, nil
		case err := <-f.Err():
			return 0, err
		}
	}, close, nil
}

// kafkaWrite returns an op writing one 1 KiB message with kafka-go's writer
// configured as sluice's: acks from all replicas, 2 ms batch timeout.
func kafkaWrite(addr string) (o op, close func(), err error) {
	ctx := context.Background()
	client := &kafkago.Client{Addr: kafkago.TCP(addr), Timeout: 10 * time.Second}
	_, _ = client.CreateTopics(ctx, &kafkago.CreateTopicsRequest{Topics: []kafkago.TopicConfig{
		{Topic: "raw", NumPartitions: 6, ReplicationFactor: -1}}})
	w := &kafkago.Writer{Addr: kafkago.TCP(addr), Topic: "raw", Balancer: &kafkago.Hash{},
		RequiredAcks: kafkago.RequireAll, BatchTimeout: 2 * time.Millisecond, BatchSize: 1000}
	var seq atomic.Int64
	return func() (int, error) {
		k := strconv.FormatInt(seq.Add(1), 36)
		if err := w.WriteMessages(ctx, kafkago.Message{Key: []byte(k), Value: payload,
			Headers: []kafkago.Header{{Key: "sluice-id", Value: []byte(k)}}}); err != nil {
			return 0, err
		}
		return 200, nil
	}, func() { _ = w.Close() }, nil
}

func rabbitURL() string {
	if u := os.Getenv("RABBITMQ_URL"); u != "" {
		return u
	}
	return "amqp://guest:guest@127.0.0.1:5672/"
}

// rabbitPublish returns an op publishing, pipelined as sluice does, one
// persistent 1 KiB message to a quorum queue through a pool of 4
// confirm-mode channels and waiting for its deferred confirm; close deletes
// the queue.
func rabbitPublish() (o op, close func(), err error) {
	conn, err := amqp.Dial(rabbitURL())
	if err != nil {
		return nil, nil, fmt.Errorf("dial RabbitMQ: %w", err)
	}
	q := fmt.Sprintf("sluice-bench-raw-%d", time.Now().UnixNano())
	setup, err := conn.Channel()
	if err == nil {
		_, err = setup.QueueDeclare(q, true, false, false, false, amqp.Table{"x-queue-type": "quorum"})
	}
	if err != nil {
		_ = conn.Close()
		return nil, nil, fmt.Errorf("declare %s: %w", q, err)
	}
	close = func() { _, _ = setup.QueueDelete(q, false, false, false); _ = conn.Close() }
	pool := make(chan *amqp.Channel, 4)
	for range 4 {
		ch, err := conn.Channel()
		if err == nil {
			err = ch.Confirm(false)
		}
		if err != nil {
			close()
			return nil, nil, fmt.Errorf("open confirm channel: %w", err)
		}
		pool <- ch
	}
	ctx := context.Background()
	return func() (int, error) {
		ch := <-pool
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", q, false, false, amqp.Publishing{
			Headers: amqp.Table{"sluice-id": "x"}, Body: payload, DeliveryMode: amqp.Persistent})
		pool <- ch
		if err != nil {
			return 0, err
		}
		ok, err := dc.WaitContext(ctx)
		if err != nil {
			return 0, err
		}
		if !ok {
			return 0, errors.New("publish: nacked")
		}
		return 200, nil
	}, close, nil
}
