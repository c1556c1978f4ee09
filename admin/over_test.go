package admin

import (
	"testing"

	"github.com/sluice-gw/sluice/cluster"
	"github.com/sluice-gw/sluice/workers"
)

// TestOver: a tuning replaces the config's value of each field it sets and
// no other; an empty one is the config.
func TestOver(t *testing.T) {
	cfg := workers.Settings{Rate: 50, Burst: 5, Concurrency: 8, Adaptive: true}
	rate, burst, conc, off, on := 0.0, 1, 2, false, true
	for _, c := range []struct {
		name string
		t    cluster.Tuning
		want workers.Settings
	}{
		{"empty: the config", cluster.Tuning{}, cfg},
		{"rate 0 (unlimited) is a value, not absent", cluster.Tuning{Rate: &rate}, workers.Settings{Rate: 0, Burst: 5, Concurrency: 8, Adaptive: true}},
		{"every field", cluster.Tuning{Rate: &rate, Burst: &burst, Concurrency: &conc, Adaptive: &off, Paused: &on},
			workers.Settings{Rate: 0, Burst: 1, Concurrency: 2, Adaptive: false, Paused: true}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := Over(cfg, c.t); got != c.want {
				t.Fatalf("%+v, want %+v", got, c.want)
			}
		})
	}
}
