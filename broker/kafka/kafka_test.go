package kafka

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/broker/brokertest"
	"github.com/sluice-gw/sluice/internal/stacks"
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
	t.Parallel() // each test runs its own kfake cluster
	if testing.Short() {
		t.Skip("the conformance suite (20 s on kfake) runs in make test")
	}
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
		// A small limit keeps TooLarge's oversized messages cheap.
		b, err := Open(ctx, Options{Brokers: addrs, TopicPrefix: prefixes[t], Partitions: 3, Backends: backends,
			MaxMessageBytes: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		return b
	})
}

// fakeCluster starts an in-process kfake cluster of n brokers, for tests
// that need what only kfake offers (faults, a cluster started late, a
// known number of brokers); they are skipped against KAFKA_BROKERS.
func fakeCluster(t *testing.T, n int) (*kfake.Cluster, []string) {
	t.Helper()
	needKfake(t)
	c, err := kfake.NewCluster(kfake.NumBrokers(n))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c, c.ListenAddrs()
}

func needKfake(t *testing.T) {
	t.Helper()
	if os.Getenv("KAFKA_BROKERS") != "" {
		t.Skip("needs an in-process kfake cluster")
	}
}

var prefixSeq atomic.Int64

// uniquePrefix isolates a test's topics on a shared cluster.
func uniquePrefix() string {
	return fmt.Sprintf("u%d-%d.", time.Now().UnixNano(), prefixSeq.Add(1))
}

// openT opens and runs a broker for the length of t.
func openT(t *testing.T, opts Options) *Broker {
	t.Helper()
	b, _ := openStop(t, opts)
	return b
}

// openStop opens and runs a broker until stop (or the end of t), which
// ends Run and closes it.
func openStop(t *testing.T, opts Options) (b *Broker, stop func()) {
	t.Helper()
	if opts.TopicPrefix == "" {
		opts.TopicPrefix = uniquePrefix()
	}
	if opts.Partitions == 0 {
		opts.Partitions = 3
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	return b, brokertest.Start(t, b)
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func client(addrs []string) *kafkago.Client {
	return &kafkago.Client{Addr: kafkago.TCP(addrs...), Timeout: 10 * time.Second}
}

// topicConfigs reads the settings sluice keeps on Kafka topic name.
func topicConfigs(t *testing.T, addrs []string, name string) map[string]string {
	t.Helper()
	resp, err := client(addrs).DescribeConfigs(ctxT(t, 10*time.Second), &kafkago.DescribeConfigsRequest{
		Resources: []kafkago.DescribeConfigRequestResource{{
			ResourceType: kafkago.ResourceTypeTopic, ResourceName: name, ConfigNames: settingNames}}})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, r := range resp.Resources {
		if r.Error != nil {
			t.Fatalf("describe %s: %v", name, r.Error)
		}
		for _, e := range r.ConfigEntries {
			got[e.ConfigName] = e.ConfigValue
		}
	}
	return got
}

// setTopicConfig changes one setting of Kafka topic name, as an operator
// would behind sluice's back.
func setTopicConfig(t *testing.T, addrs []string, name, key, value string) {
	t.Helper()
	resp, err := client(addrs).IncrementalAlterConfigs(ctxT(t, 10*time.Second), &kafkago.IncrementalAlterConfigsRequest{
		Resources: []kafkago.IncrementalAlterConfigsRequestResource{{
			ResourceType: kafkago.ResourceTypeTopic, ResourceName: name,
			Configs: []kafkago.IncrementalAlterConfigsRequestConfig{{
				Name: key, Value: value, ConfigOperation: kafkago.ConfigOperationSet}}}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range resp.Resources {
		if r.Error != nil {
			t.Fatalf("set %s of %s: %v", key, name, r.Error)
		}
	}
}

func subscribe(t *testing.T, b *Broker, topic string) broker.Subscription {
	t.Helper()
	sub, err := b.Subscribe(ctxT(t, 10*time.Second), topic, broker.SubscribeOptions{Prefetch: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Close() })
	return sub
}

// ours lists the goroutines running this package's code (its tests
// aside): after Close, none of them may be left.
func ours() []string { return stacks.Running("sluice/broker/kafka") }

// noneOf fails t if a goroutine running code whose name contains fn is
// left.
func noneOf(t *testing.T, fn string) {
	t.Helper()
	for _, g := range ours() {
		if strings.Contains(g, fn) {
			t.Fatalf("goroutine left running:\n%s", g)
		}
	}
}
