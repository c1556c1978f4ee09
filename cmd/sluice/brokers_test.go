package main

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestBrokerPath runs the full path through each external broker:
// deliveries with retries, a dead letter, and its replay, each with its
// attempt log.
func TestBrokerPath(t *testing.T) {
	integration(t)
	t.Parallel()
	eachBrokerParallel(t, []string{"kafka", "rabbitmq"}, []string{"flaky", "dead"}, func(t *testing.T, kind, brokerCfg, _ string) {
		brokerPath(t, brokerCfg, kind == "rabbitmq")
	})
}

// brokerPath: replayByID replays the dead letter by its id, else all of
// the backend's dead letters.
func brokerPath(t *testing.T, brokerCfg string, replayByID bool) {
	flaky := newBackend(t, func(h hit, n int) (int, map[string]string, string) {
		if n < 2 {
			return 503, nil, "busy"
		}
		return 200, nil, "stored"
	})
	dead := newBackend(t, func(h hit, n int) (int, map[string]string, string) { return 500, nil, "down" })
	g := startGateway(t, brokerCfg+`
routes:
  - { name: logs, path: /v1/logs, backend: flaky }
  - { name: dead, path: /v1/dead, backend: dead }
backends:
`+backendCfg("flaky", flaky.URL, "    retry: { initial_backoff: 100ms, max_backoff: 300ms }\n")+
		backendCfg("dead", dead.URL, "    retry: { max_attempts: 2, initial_backoff: 100ms, max_backoff: 200ms }\n"))
	if resp, body := do(t, "GET", g.admin+"/readyz", "", nil); resp.StatusCode != 200 {
		t.Fatalf("readyz: %d %s (make test starts the brokers)", resp.StatusCode, body)
	}

	var ids []string
	for i := range 20 {
		ids = append(ids, g.submit("/v1/logs?i="+fmt.Sprint(i), fmt.Sprintf(`{"i":%d}`, i), map[string]string{"X-Custom": "v"}).ID)
	}
	for _, id := range ids {
		r := g.await(id, 30*time.Second)
		if r.Status != "succeeded" || r.Attempts != 2 || r.Response == nil || r.Response.Body != "stored" {
			t.Fatalf("%s: %+v", id, r)
		}
		checkLog(t, r, "503 200")
		hits := flaky.hitsFor(id)
		if len(hits) != 2 || hits[1].Header.Get("X-Sluice-Attempt") != "2" || hits[1].Header.Get("X-Custom") != "v" {
			t.Fatalf("%s: backend saw %d attempts", id, len(hits))
		}
	}

	d := g.submit("/v1/dead", "x", nil)
	if r := g.await(d.ID, 30*time.Second); r.Status != "failed" || !r.DeadLettered || r.Attempts != 2 {
		t.Fatalf("dead: %+v", r)
	} else {
		checkLog(t, r, "500 500")
	}
	_, body := do(t, "GET", g.admin+"/admin/dead-letters?backend=dead", "", nil)
	if !strings.Contains(string(body), d.ID) {
		t.Fatalf("dead letters: %s", body)
	}
	dead.setRespond(func(h hit, n int) (int, map[string]string, string) { return 200, nil, "ok" })
	replay := `{"backend":"dead"}`
	if replayByID {
		replay = `{"backend":"dead","ids":["` + d.ID + `"]}`
	}
	_, body = do(t, "POST", g.admin+"/admin/dead-letters/replay", replay, nil)
	if strings.TrimSpace(string(body)) != `{"replayed":1}` {
		t.Fatalf("replay: %s", body)
	}
	if r := g.await(d.ID, 30*time.Second); r.Status != "succeeded" || r.Attempts != 1 {
		t.Fatalf("after replay: %+v", r)
	} else {
		checkLog(t, r, "500 500 200/1") // the attempt log travels through the broker's retries and dead letters
	}
	_, body = do(t, "GET", g.admin+"/admin/dead-letters?backend=dead", "", nil)
	if strings.Contains(string(body), d.ID) {
		t.Fatalf("replayed dead letter still listed: %s", body)
	}
}
