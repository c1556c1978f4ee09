package main

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/broker/rabbitmq"
)

func rabbitURL() string {
	if u := os.Getenv("RABBITMQ_URL"); u != "" {
		return u
	}
	return "amqp://guest:guest@127.0.0.1:5672/"
}

func rabbitCfg(prefix string) string {
	return fmt.Sprintf("broker:\n  kind: rabbitmq\n  rabbitmq: { url: %q, queue_prefix: %q }\n", rabbitURL(), prefix)
}

// rabbitPrefix is a queue prefix of t's own; the queues of backends under it
// are deleted when t ends.
func rabbitPrefix(t *testing.T, backends ...string) string {
	prefix := fmt.Sprintf("sluice-%s-%d.", strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")), time.Now().UnixNano())
	t.Cleanup(func() {
		_ = rabbitmq.DeleteQueues(rabbitmq.Options{URL: rabbitURL(), QueuePrefix: prefix, Backends: backends})
	})
	return prefix
}

// eachBroker runs f as a subtest per broker kind in kinds ("embedded",
// "kafka", "rabbitmq"), with the config lines that select it (declaring
// backends) and a prefix of the subtest's own for topics, queues and keys.
func eachBroker(t *testing.T, kinds []string, backends []string, f func(t *testing.T, kind, brokerCfg, prefix string)) {
	eachBrokerRun(t, false, kinds, backends, f)
}

// eachBrokerParallel is eachBroker with the subtests run in parallel, for
// a test that is parallel itself.
func eachBrokerParallel(t *testing.T, kinds []string, backends []string, f func(t *testing.T, kind, brokerCfg, prefix string)) {
	eachBrokerRun(t, true, kinds, backends, f)
}

func eachBrokerRun(t *testing.T, parallel bool, kinds []string, backends []string, f func(t *testing.T, kind, brokerCfg, prefix string)) {
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			if parallel {
				t.Parallel()
			}
			switch kind {
			case "kafka":
				addrs, prefix := kafkaBrokers(t)
				f(t, kind, kafkaCfg(addrs, prefix), prefix)
			case "rabbitmq":
				prefix := rabbitPrefix(t, backends...)
				f(t, kind, rabbitCfg(prefix), prefix)
			default:
				f(t, kind, "", fmt.Sprintf("emb%d.", time.Now().UnixNano()))
			}
		})
	}
}

var allBrokers = []string{"embedded", "kafka", "rabbitmq"}
