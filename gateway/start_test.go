package gateway

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/sluice-gw/sluice/admin"
	"github.com/sluice-gw/sluice/backlog"
	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/config"
	"github.com/sluice-gw/sluice/ingress"
	"github.com/sluice-gw/sluice/internal/stacks"
	"github.com/sluice-gw/sluice/results/collector"
	"github.com/sluice-gw/sluice/workers"
)

// ours lists the goroutines running code of this module (its tests aside).
func ours() []string {
	return stacks.Matching(func(g string) bool {
		return strings.Contains(g, "github.com/sluice-gw/sluice/") && !strings.Contains(g, "_test.go") &&
			!strings.Contains(g, "testing.tRunner")
	})
}

// TestConstructorsStartNothing: opening the broker and the store and
// building every part (ingress, pools, dead letters, collector, backlog
// monitor, admin API) starts no goroutine of ours; Run does, and every one
// has ended when Run returns.
func TestConstructorsStartNothing(t *testing.T) {
	dir := t.TempDir()
	cfg, err := config.Parse([]byte(`
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
ack: fast
shutdown_timeout: 4s
routes: [{ name: r, path: /r, backend: b }]
backends: [{ name: b, urls: ["http://127.0.0.1:1/"] }]
`), dir)
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(cfg, Options{Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	if left := ours(); len(left) > 0 {
		t.Fatalf("before New: %d goroutines of ours, e.g.\n%s", len(left), left[0])
	}
	br, err := g.openBroker(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	store, err := g.openStore()
	if err != nil {
		t.Fatal(err)
	}
	topics := []string{broker.RequestTopic("b")}
	monitor := backlog.New(br, topics, time.Second)
	manager := workers.NewManager(cfg, br, zerolog.Nop())
	if _, err := ingress.New(cfg, br, store, monitor, zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
	collector.New(br, store, zerolog.Nop(), collector.Options{})
	admin.New("", false, manager, workers.NewDeadLetters(br, manager.Names(), store, zerolog.Nop()), monitor, nil)
	cs, _, err := g.openCluster()
	if err != nil {
		t.Fatal(err)
	}
	g.newNode(cs, manager, "127.0.0.1:1")
	if left := ours(); len(left) > 0 {
		t.Fatalf("opening the broker and the store and building every part started %d goroutines of ours, e.g.\n%s",
			len(left), left[0])
	}
	_ = store.Close()
	_ = br.Close()

	ctx, cancel := context.WithCancel(context.Background())
	up := make(chan struct{})
	g.ready = func(string, string) { close(up) }
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	select {
	case <-up:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not come up in 10 s")
	}
	if len(ours()) == 0 {
		t.Fatal("Run started nothing: the check above cannot see our goroutines")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10 s of its context's end")
	}
	if left := stacks.Left(5*time.Second, ours); len(left) > 0 {
		t.Fatalf("%d goroutines of ours left after Run returned, e.g.\n%s", len(left), left[0])
	}
}
