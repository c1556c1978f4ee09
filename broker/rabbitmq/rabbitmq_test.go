package rabbitmq

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/broker/brokertest"
)

// amqpURL is the RabbitMQ the tests use: RABBITMQ_URL, else the local one
// (make test starts it). It is a failure, not a skip, when absent.
func amqpURL() string {
	if u := os.Getenv("RABBITMQ_URL"); u != "" {
		return u
	}
	return "amqp://guest:guest@127.0.0.1:5672/"
}

func TestConformance(t *testing.T) {
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
		t.Cleanup(func() {
			_ = b.Close()
			if !restart {
				_ = DeleteQueues(b.opts)
			}
		})
		return b
	})
}
