package kafka

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/broker/brokertest"
)

// brokers returns KAFKA_BROKERS, or the address of a fresh in-process kfake
// cluster that lives as long as t.
func brokers(t *testing.T) []string {
	if env := os.Getenv("KAFKA_BROKERS"); env != "" {
		return strings.Split(env, ",")
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()
}

func TestConformance(t *testing.T) {
	clusters := map[*testing.T][]string{}
	prefixes := map[*testing.T]string{}
	n := 0
	brokertest.Run(t, func(t *testing.T, backends []string, restart bool) broker.Broker {
		addrs, ok := clusters[t]
		if !ok || !restart {
			addrs = brokers(t)
			clusters[t] = addrs
			n++
			prefixes[t] = fmt.Sprintf("t%d-%d.", time.Now().UnixNano(), n) // isolates runs on a shared cluster
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		b, err := Open(ctx, Options{Brokers: addrs, TopicPrefix: prefixes[t], Partitions: 3, Backends: backends})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Close() })
		return b
	})
}
