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

func TestKafkaSubmitDeliverPoll(t *testing.T) {
	addrs, prefix := kafkaBrokers(t)
	flaky := newBackend(t, func(h hit, n int) (int, map[string]string, string) {
		if n < 2 {
			return 503, nil, "busy"
		}
		return 200, nil, "stored"
	})
	dead := newBackend(t, func(h hit, n int) (int, map[string]string, string) { return 500, nil, "down" })
	g := startGateway(t, kafkaCfg(addrs, prefix)+`
routes:
  - { name: logs, path: /v1/logs, backend: flaky }
  - { name: dead, path: /v1/dead, backend: dead }
backends:
`+backendCfg("flaky", flaky.URL, "    retry: { initial_backoff: 100ms, max_backoff: 300ms }\n")+
		backendCfg("dead", dead.URL, "    retry: { max_attempts: 2, initial_backoff: 100ms, max_backoff: 200ms }\n"))

	var ids []string
	for i := range 20 {
		ids = append(ids, g.submit("/v1/logs?i="+fmt.Sprint(i), fmt.Sprintf(`{"i":%d}`, i), map[string]string{"X-Custom": "v"}).ID)
	}
	for _, id := range ids {
		r := g.await(id, 30*time.Second)
		if r.Status != "succeeded" || r.Attempts != 2 || r.Response == nil || r.Response.Body != "stored" {
			t.Fatalf("%s: %+v", id, r)
		}
		hits := flaky.hitsFor(id)
		if len(hits) != 2 || hits[1].Header.Get("X-Sluice-Attempt") != "2" || hits[1].Header.Get("X-Custom") != "v" {
			t.Fatalf("%s: backend saw %d attempts", id, len(hits))
		}
	}

	d := g.submit("/v1/dead", "x", nil)
	if r := g.await(d.ID, 30*time.Second); r.Status != "failed" || !r.DeadLettered || r.Attempts != 2 {
		t.Fatalf("dead: %+v", r)
	}
	_, body := do(t, "GET", g.admin+"/admin/dead-letters?backend=dead", "", nil)
	if !strings.Contains(string(body), d.ID) {
		t.Fatalf("dead letters: %s", body)
	}
	dead.setRespond(func(h hit, n int) (int, map[string]string, string) { return 200, nil, "ok" })
	_, body = do(t, "POST", g.admin+"/admin/dead-letters/replay", `{"backend":"dead"}`, nil)
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
