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

// TestRabbitMQSubmitDeliverPoll: the full path through a real RabbitMQ:
// deliveries, retries, dead letter and replay.
func TestRabbitMQSubmitDeliverPoll(t *testing.T) {
	prefix := fmt.Sprintf("sluice-e2e-%d.", time.Now().UnixNano())
	t.Cleanup(func() {
		_ = rabbitmq.DeleteQueues(rabbitmq.Options{URL: rabbitURL(), QueuePrefix: prefix, Backends: []string{"flaky", "dead"}})
	})
	flaky := newBackend(t, func(h hit, n int) (int, map[string]string, string) {
		if n < 2 {
			return 503, nil, "busy"
		}
		return 200, nil, "stored"
	})
	dead := newBackend(t, func(h hit, n int) (int, map[string]string, string) { return 500, nil, "down" })
	g := startGateway(t, rabbitCfg(prefix)+`
routes:
  - { name: logs, path: /v1/logs, backend: flaky }
  - { name: dead, path: /v1/dead, backend: dead }
backends:
`+backendCfg("flaky", flaky.URL, "    retry: { initial_backoff: 100ms, max_backoff: 300ms }\n")+
		backendCfg("dead", dead.URL, "    retry: { max_attempts: 2, initial_backoff: 100ms, max_backoff: 200ms }\n"))
	resp, body := do(t, "GET", g.admin+"/readyz", "", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("readyz: %d %s (is RabbitMQ at %s? make test starts it)", resp.StatusCode, body, rabbitURL())
	}
	var ids []string
	for i := range 20 {
		ids = append(ids, g.submit("/v1/logs", fmt.Sprintf(`{"i":%d}`, i), nil).ID)
	}
	for _, id := range ids {
		if r := g.await(id, 30*time.Second); r.Status != "succeeded" || r.Attempts != 2 {
			t.Fatalf("%s: %+v", id, r)
		}
	}
	d := g.submit("/v1/dead", "x", nil)
	if r := g.await(d.ID, 30*time.Second); r.Status != "failed" || !r.DeadLettered {
		t.Fatalf("dead: %+v", r)
	}
	_, body = do(t, "GET", g.admin+"/admin/dead-letters?backend=dead", "", nil)
	if !strings.Contains(string(body), d.ID) {
		t.Fatalf("dead letters: %s", body)
	}
	dead.setRespond(func(h hit, n int) (int, map[string]string, string) { return 200, nil, "ok" })
	_, body = do(t, "POST", g.admin+"/admin/dead-letters/replay", `{"backend":"dead","ids":["`+d.ID+`"]}`, nil)
	if strings.TrimSpace(string(body)) != `{"replayed":1}` {
		t.Fatalf("replay: %s", body)
	}
	if r := g.await(d.ID, 30*time.Second); r.Status != "succeeded" || r.Attempts != 1 {
		t.Fatalf("after replay: %+v", r)
	}
	_, body = do(t, "GET", g.admin+"/admin/dead-letters?backend=dead", "", nil)
	if strings.Contains(string(body), d.ID) {
		t.Fatalf("replayed dead letter still listed: %s", body)
	}
}
