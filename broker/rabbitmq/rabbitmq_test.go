package rabbitmq

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/broker/brokertest"
	"github.com/sluice-gw/sluice/internal/rabbitctl"
)

// needRabbit skips t under -short: every test here but the pure ones
// talks to a real RabbitMQ.
func needRabbit(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs RabbitMQ")
	}
}

// amqpURL is the RabbitMQ the tests use: RABBITMQ_URL, else the local one
// (make test starts it). It is a failure, not a skip, when absent.
func amqpURL() string {
	if u := os.Getenv("RABBITMQ_URL"); u != "" {
		return u
	}
	return "amqp://guest:guest@127.0.0.1:5672/"
}

func TestConformance(t *testing.T) {
	needRabbit(t)
	prefixes := map[*testing.T]string{}
	n := 0
	brokertest.Run(t, func(t *testing.T, backends []string, restart bool) broker.Broker {
		if _, ok := prefixes[t]; !ok || !restart {
			n++
			prefixes[t] = fmt.Sprintf("sluice-test-%d-%d.", time.Now().UnixNano(), n)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		b, err := Open(ctx, Options{URL: amqpURL(), QueuePrefix: prefixes[t], Backends: backends})
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Ping(ctx); err != nil {
			t.Fatalf("no RabbitMQ at %s (make test starts one): %v", amqpURL(), err)
		}
		if !restart { // after the suite stopped and closed every broker of t
			t.Cleanup(func() {
				if err := DeleteQueues(b.opts); err != nil {
					t.Errorf("delete queues: %v", err)
				}
			})
		}
		return b
	})
}

// testPrefix is a queue prefix no other test (here or in another package
// on the same server) uses.
func testPrefix(kind string) string {
	return fmt.Sprintf("sluice-%s-%d.", kind, time.Now().UnixNano())
}

// stops holds the stop function of every broker openTest started.
var stops sync.Map // *Broker -> func()

// stopTest stops b, opened by openTest: Run returns, then b closes.
func stopTest(b *Broker) {
	f, _ := stops.Load(b)
	f.(func())()
}

// openTest opens and runs a broker (on a fresh prefix unless opts names one, for
// backend "a" unless opts names others), and closes it and deletes its
// queues when the test ends.
func openTest(t *testing.T, opts Options) *Broker {
	t.Helper()
	needRabbit(t)
	if opts.URL == "" {
		opts.URL = amqpURL()
	}
	if opts.QueuePrefix == "" {
		opts.QueuePrefix = testPrefix("unit")
	}
	if opts.Backends == nil {
		opts.Backends = []string{"a"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // after stop
		if err := DeleteQueues(b.opts); err != nil {
			t.Errorf("delete queues: %v", err)
		}
	})
	stops.Store(b, brokertest.Start(t, b))
	if err := b.Ping(ctx); err != nil {
		t.Fatalf("no RabbitMQ at %s (make test starts one): %v", amqpURL(), err)
	}
	return b
}

// needCtl is for tests that tune or inspect the server with rabbitmqctl,
// which works on the local one only.
func needCtl(t *testing.T) {
	t.Helper()
	needRabbit(t)
	if os.Getenv("RABBITMQ_URL") != "" {
		t.Skip("needs rabbitmqctl on the RabbitMQ under test")
	}
	if _, err := exec.LookPath("rabbitmqctl"); err != nil {
		t.Fatal("rabbitmqctl not found (make test installs RabbitMQ)")
	}
}

func ctlOutput(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := rabbitctl.Output(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// rawChannel is a channel on a connection of its own, for setting the
// scene the way another program (or an earlier sluice) would.
func rawChannel(t *testing.T) *amqp.Channel {
	t.Helper()
	needRabbit(t)
	conn, err := amqp.Dial(amqpURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

type queueInfo struct {
	Name      string
	Type      string
	Messages  int
	Arguments map[string]any // numbers as float64
}

// queuesWith lists the server's queues whose names start with prefix.
func queuesWith(t *testing.T, prefix string) map[string]queueInfo {
	t.Helper()
	var all []struct {
		Name      string  `json:"name"`
		Type      string  `json:"type"`
		Messages  int     `json:"messages"`
		Arguments [][]any `json:"arguments"` // [name, type, value]
	}
	out := ctlOutput(t, "list_queues", "name", "type", "messages", "arguments", "--formatter", "json", "--quiet")
	if err := json.Unmarshal([]byte(out), &all); err != nil {
		t.Fatalf("list_queues: %v\n%s", err, out)
	}
	got := map[string]queueInfo{}
	for _, q := range all {
		if !strings.HasPrefix(q.Name, prefix) {
			continue
		}
		info := queueInfo{Name: q.Name, Type: q.Type, Messages: q.Messages, Arguments: map[string]any{}}
		for _, a := range q.Arguments {
			if len(a) == 3 {
				if k, ok := a[0].(string); ok {
					info.Arguments[k] = a[2]
				}
			}
		}
		got[q.Name] = info
	}
	return got
}

// TestOpenHonoursItsContext: a server that takes the TCP connection and
// never answers the AMQP handshake holds Open no longer than its context
// (amqp091 alone waits 30 s, whatever the context says).
func TestOpenHonoursItsContext(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // silent until the test ends
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	b, err := Open(ctx, Options{URL: "amqp://guest:guest@" + ln.Addr().String() + "/", Backends: []string{"a"}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("Open took %s with a 1 s context", took)
	}
	if err := b.Ping(context.Background()); err == nil {
		t.Fatal("Ping succeeded against a server that never answered")
	}
}
