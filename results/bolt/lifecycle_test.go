package bolt

import (
	"strings"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/internal/stacks"
	"github.com/sluice-gw/sluice/internal/wait"
	"github.com/sluice-gw/sluice/results/storetest"
)

// storeGoroutines returns the stacks of goroutines a store runs.
func storeGoroutines() []string {
	return stacks.Matching(func(g string) bool {
		return strings.Contains(g, "results/bolt.(*Store)") || strings.Contains(g, "results/bolt.every")
	})
}

// TestGoroutinesEndWithRun: Open starts no goroutine; the flush loop and
// the sweeper Run starts are gone when it returns.
func TestGoroutinesEndWithRun(t *testing.T) {
	s := openIdle(t, Options{Dir: t.TempDir()})
	if left := storeGoroutines(); len(left) != 0 {
		t.Fatalf("goroutines run after Open, before Run:\n\n%s", strings.Join(left, "\n\n"))
	}
	stop := storetest.Start(t, s)
	wait.For(t, 5*time.Second, "the flush loop and sweeper while the store runs (stale stack marks?)",
		func() bool { return len(storeGoroutines()) >= 2 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if left := storeGoroutines(); len(left) != 0 {
		t.Fatalf("%d goroutines outlive Run:\n\n%s", len(left), strings.Join(left, "\n\n"))
	}
}
