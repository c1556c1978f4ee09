package kafka

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/broker/brokertest"
	"github.com/sluice-gw/sluice/internal/wait"
)

// metadata returns Kafka topic name's partition count and replication
// factor, and the number of brokers in the cluster.
func metadata(t *testing.T, addrs []string, name string) (parts, rf, brokers int) {
	t.Helper()
	md, err := client(addrs).Metadata(ctxT(t, 10*time.Second), &kafkago.MetadataRequest{Topics: []string{name}})
	if err != nil || len(md.Topics) != 1 || md.Topics[0].Error != nil {
		t.Fatalf("metadata of %s: %v %+v", name, err, md)
	}
	p := md.Topics[0].Partitions
	return len(p), len(p[0].Replicas), len(md.Brokers)
}

func wantConfigs(t *testing.T, addrs []string, name string, want map[string]string) {
	t.Helper()
	got := topicConfigs(t, addrs, name)
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s = %q, want %q", name, k, got[k], v)
		}
	}
}

// TestCreatedTopicSettings: every topic sluice creates carries its
// retention, size limit, replication and min.insync.replicas, not Kafka's
// defaults (7 days would delete dead letters and a long-paused backlog).
func TestCreatedTopicSettings(t *testing.T) {
	t.Parallel() // each test runs its own kfake cluster
	for _, n := range []int{1, 3} {
		t.Run(fmt.Sprintf("%d brokers", n), func(t *testing.T) {
			var addrs []string
			if n == 1 {
				addrs = brokers(t)
			} else {
				_, addrs = fakeCluster(t, n)
			}
			// No forwarders: their group, joined and left at once, would
			// hold Close up to its session timeout.
			b := openT(t, Options{Brokers: addrs, Backends: []string{"a"}, MaxMessageBytes: 1 << 20,
				Retention: 48 * time.Hour, NoForward: true})
			_, _, nb := metadata(t, addrs, b.name(broker.ResultTopic))
			rf := min(3, nb)
			common := map[string]string{
				"max.message.bytes":   strconv.Itoa(1<<20 + batchRoom),
				"min.insync.replicas": strconv.Itoa(max(1, rf-1)),
			}
			for topic, retention := range map[string]string{
				broker.RequestTopic("a"):          "172800000",
				broker.ResultTopic:                "172800000",
				tierTopic(100 * time.Millisecond): "172800000",
				tierTopic(time.Hour):              "172800000",
				broker.DeadLetterTopic("a"):       "-1",
				takenTopic:                        "-1",
			} {
				name := b.name(topic)
				want := map[string]string{"retention.ms": retention}
				for k, v := range common {
					want[k] = v
				}
				wantConfigs(t, addrs, name, want)
				if parts, got, _ := metadata(t, addrs, name); parts != 3 || got != rf {
					t.Errorf("%s: %d partitions, %d replicas; want 3, %d", name, parts, got, rf)
				}
			}
		})
	}
}

// TestExplicitTopicSettings: options override the defaults.
func TestExplicitTopicSettings(t *testing.T) {
	t.Parallel() // each test runs its own kfake cluster
	_, addrs := fakeCluster(t, 3)
	b := openT(t, Options{Brokers: addrs, Backends: []string{"a"}, ReplicationFactor: 2, MinInsyncReplicas: 2,
		DeadLetterRetention: 90 * 24 * time.Hour, NoForward: true})
	wantConfigs(t, addrs, b.name(broker.DeadLetterTopic("a")), map[string]string{
		"retention.ms": "7776000000", "min.insync.replicas": "2", "max.message.bytes": strconv.Itoa(4<<20 + batchRoom)})
	wantConfigs(t, addrs, b.name(broker.RequestTopic("a")), map[string]string{"retention.ms": "2592000000"})
	if _, rf, _ := metadata(t, addrs, b.name(broker.RequestTopic("a"))); rf != 2 {
		t.Fatalf("replication factor %d, want 2", rf)
	}
}

// TestExistingTopicsCorrected: topics made earlier (by an operator, by an
// older sluice) get sluice's settings at start; their partitions and
// replicas stay.
func TestExistingTopicsCorrected(t *testing.T) {
	t.Parallel() // each test runs its own kfake cluster
	addrs := brokers(t)
	prefix := uniquePrefix()
	week := "604800000"
	req, dlq := prefix+broker.RequestTopic("a"), prefix+broker.DeadLetterTopic("a")
	resp, err := client(addrs).CreateTopics(ctxT(t, 10*time.Second), &kafkago.CreateTopicsRequest{Topics: []kafkago.TopicConfig{
		{Topic: req, NumPartitions: 2, ReplicationFactor: 1, ConfigEntries: []kafkago.ConfigEntry{
			{ConfigName: "max.message.bytes", ConfigValue: "1000"}, {ConfigName: "retention.ms", ConfigValue: week}}},
		{Topic: dlq, NumPartitions: 1, ReplicationFactor: 1, ConfigEntries: []kafkago.ConfigEntry{
			{ConfigName: "retention.ms", ConfigValue: week}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for n, err := range resp.Errors {
		if err != nil {
			t.Fatalf("create %s: %v", n, err)
		}
	}
	// Asked for 2 in-sync replicas, a topic of one replica gets 1: with
	// 2 no write could succeed.
	b := openT(t, Options{Brokers: addrs, TopicPrefix: prefix, Backends: []string{"a"}, MinInsyncReplicas: 2})
	limit := strconv.Itoa(4<<20 + batchRoom)
	wantConfigs(t, addrs, req, map[string]string{"max.message.bytes": limit, "retention.ms": "2592000000", "min.insync.replicas": "1"})
	wantConfigs(t, addrs, dlq, map[string]string{"max.message.bytes": limit, "retention.ms": "-1", "min.insync.replicas": "1"})
	if parts, rf, _ := metadata(t, addrs, req); parts != 2 || rf != 1 {
		t.Fatalf("%s: %d partitions, %d replicas; want the 2 and 1 it was made with", req, parts, rf)
	}
	if err := b.Publish(ctxT(t, 10*time.Second), broker.RequestTopic("a"), broker.Message{Key: "k", Body: make([]byte, 100<<10)}); err != nil {
		t.Fatalf("publish 100 KiB to the corrected topic: %v", err)
	}
}

// TestOpenBeforeKafka: Open returns while Kafka is not there, the broker
// reports itself unavailable, and once Kafka comes up the topics are
// created with their settings and messages flow.
func TestOpenBeforeKafka(t *testing.T) {
	t.Parallel() // each test runs its own kfake cluster
	if testing.Short() {
		t.Skip("waits for a late cluster")
	}
	needKfake(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	addrs := []string{fmt.Sprintf("127.0.0.1:%d", port)}

	ctx := ctxT(t, 500*time.Millisecond)
	start := time.Now()
	b, err := Open(ctx, Options{Brokers: addrs, TopicPrefix: uniquePrefix(), Partitions: 2, Backends: []string{"a"}})
	if err != nil {
		t.Fatalf("Open without Kafka: %v", err)
	}
	brokertest.Start(t, b)
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("Open took %v without Kafka", el)
	}
	if err := b.Ping(ctxT(t, time.Second)); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("ping without Kafka: %v", err)
	}
	if err := b.Publish(ctxT(t, time.Second), broker.RequestTopic("a"), broker.Message{Key: "k"}); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("publish without Kafka: %v", err)
	}
	sub := subscribe(t, b, broker.RequestTopic("a"))

	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	wait.For(t, 30*time.Second, "the broker ready (Ping) after Kafka came up", func() bool { return b.Ping(ctxT(t, time.Second)) == nil })
	wantConfigs(t, addrs, b.name(broker.DeadLetterTopic("a")), map[string]string{"retention.ms": "-1"})
	if err := b.Publish(ctxT(t, 10*time.Second), broker.RequestTopic("a"), broker.Message{Key: "k"}); err != nil {
		t.Fatalf("publish once Kafka is up: %v", err)
	}
	if d := brokertest.FetchOne(t, sub, 30*time.Second); d.Message().Key != "k" {
		t.Fatalf("got %q", d.Message().Key)
	}
}
