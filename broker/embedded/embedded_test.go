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
		return b
	})
}

// TestSync: the fsync policy reaches JetStream: always, or an interval.
func TestSync(t *testing.T) {
	for _, o := range []Options{{SyncAlways: true}, {SyncInterval: 3 * time.Second}, {}} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		o.Dir, o.Backends = t.TempDir(), []string{"a"}
		b, err := Open(ctx, o)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		cfg := b.ns.JetStreamConfig()
		if err := b.Close(); err != nil { // never run: Close alone must do
			t.Fatal(err)
		}
		want := o.SyncInterval
		if want == 0 {
			want = 2 * time.Minute
		}
		if cfg == nil || cfg.SyncAlways != o.SyncAlways || (!o.SyncAlways && cfg.SyncInterval != want) {
			t.Fatalf("options %+v: JetStream runs with %+v", o, cfg)
		}
	}
}
