package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/broker/rabbitmq"
)

func rabbitctl(t *testing.T, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "rabbitmqctl", args...).CombinedOutput(); err != nil {
		t.Fatalf("rabbitmqctl %v: %v\n%s", args, err, out)
	}
}

func rabbitBack(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second)
	defer cancel()
	if exec.CommandContext(ctx, "rabbitmqctl", "start_app").Run() == nil {
		return
	}
	_ = exec.Command("rabbitmq-server", "-detached").Run()
	for ctx.Err() == nil {
		if exec.CommandContext(ctx, "rabbitmqctl", "await_startup").Run() == nil {
			return
		}
		time.Sleep(time.Second)
	}
	t.Error("RabbitMQ did not come back")
}

// TestRabbitMQRestartsMidStream: through sluice, RabbitMQ is stopped
// (stop_app), started, then SIGKILLed and restarted, in the middle of a
// stream of submits: 503s while it is away, delivery resumes by itself,
// every id that got a 202 succeeds.
func TestRabbitMQRestartsMidStream(t *testing.T) {
	if testing.Short() || os.Getenv("RABBITMQ_URL") != "" {
		t.Skip("restarts the local RabbitMQ")
	}
	t.Cleanup(func() { rabbitBack(t) })
	prefix := fmt.Sprintf("sluice-rfault-%d.", time.Now().UnixNano())
	t.Cleanup(func() {
		_ = rabbitmq.DeleteQueues(rabbitmq.Options{URL: rabbitURL(), QueuePrefix: prefix, Backends: []string{"b"}})
	})
	be := newBackend(t, nil)
	cfg := writeConfig(t, t.TempDir(), rabbitCfg(prefix)+`
log: { level: info }
publish_timeout: 2s
routes: [{ name: r, path: /r, backend: b }]
backends:
`+backendCfg("b", be.URL, "    rate: 200\n    concurrency: 8\n"))
	p := startProc(t, cfg)

	st := startStream(t, p.base, 20000)
	st.waitFor(t, 200, "start")
	rabbitctl(t, "stop_app")
	time.Sleep(2 * time.Second)
	rabbitctl(t, "start_app")
	st.waitFor(t, st.count()+200, "stop_app/start_app")
	if out, err := exec.Command("pkill", "-9", "-f", "beam.smp").CombinedOutput(); err != nil {
		t.Fatalf("pkill beam.smp: %v %s", err, out)
	}
	time.Sleep(2 * time.Second)
	rabbitBack(t)
	st.waitFor(t, st.count()+200, "SIGKILL and restart")
	ids := st.end()
	t.Logf("%d accepted, %d answered 503 while RabbitMQ was away", len(ids), st.n503.Load())
	if st.n503.Load() == 0 {
		t.Fatal("no 503 while RabbitMQ was away")
	}
	awaitAll(t, p.base, ids, 120*time.Second)
}
