package main

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// kafkaBrokers returns KAFKA_BROKERS, or a fresh in-process kfake cluster,
// plus a topic prefix unique to this test.
func kafkaBrokers(t *testing.T) (string, string) {
	t.Helper()
	prefix := fmt.Sprintf("e2e%d.", time.Now().UnixNano())
	if env := os.Getenv("KAFKA_BROKERS"); env != "" {
		return env, prefix
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return strings.Join(c.ListenAddrs(), ","), prefix
}

func kafkaCfg(addrs, prefix string) string {
	return fmt.Sprintf("broker:\n  kind: kafka\n  kafka: { brokers: [%s], topic_prefix: %q, partitions: 3 }\n", addrs, prefix)
}
