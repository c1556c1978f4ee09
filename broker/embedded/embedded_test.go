package embedded

import (
	"context"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/broker/brokertest"
)

func TestConformance(t *testing.T) {
	dirs := map[*testing.T]string{}
	brokertest.Run(t, func(t *testing.T, backends []string, restart bool) broker.Broker {
		dir, ok := dirs[t]
		if !ok || !restart {
			dir = t.TempDir()
			dirs[t] = dir
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		b, err := Open(ctx, Options{Dir: dir, Backends: backends, AckWait: time.Minute, MaxMessageBytes: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Close() })
		return b
	})
}
