package main

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/internal/rabbitctl"
	"github.com/sluice-gw/sluice/internal/wait"
)

// TestRabbitMQRestartsMidStream: through sluice, RabbitMQ is stopped
// (stop_app), started, then SIGKILLed and restarted, in the middle of a
// stream of submits: 503s while it is away, delivery resumes by itself,
// every id that got a 202 succeeds.
func TestRabbitMQRestartsMidStream(t *testing.T) {
	integration(t)
	if testing.Short() || os.Getenv("RABBITMQ_URL") != "" {
		t.Skip("restarts the local RabbitMQ")
	}
	t.Cleanup(func() { rabbitRunning(t) })
	prefix := rabbitPrefix(t, "b")
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
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n503 := st.n503.Load()
	if err := rabbitctl.Ctl(ctx, "stop_app"); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 30*time.Second, "a 503 while RabbitMQ is stopped", func() bool { return st.n503.Load() > n503 })
	if err := rabbitctl.Ctl(ctx, "start_app"); err != nil {
		t.Fatal(err)
	}
	st.waitFor(t, st.count()+200, "stop_app/start_app")
	n503 = st.n503.Load()
	if err := rabbitctl.Kill(); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 30*time.Second, "a 503 while RabbitMQ is killed", func() bool { return st.n503.Load() > n503 })
	rabbitRunning(t)
	st.waitFor(t, st.count()+200, "SIGKILL and restart")
	ids := st.end()
	t.Logf("%d accepted, %d answered 503 while RabbitMQ was away", len(ids), st.n503.Load())
	if st.n503.Load() == 0 {
		t.Fatal("no 503 while RabbitMQ was away")
	}
	awaitAll(t, p.base, ids, 120*time.Second)
}

func rabbitRunning(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := rabbitctl.EnsureRunning(ctx); err != nil {
		t.Error(err)
	}
}
