package bolt_test

import (
	"testing"
	"time"

	"github.com/sluice-gw/sluice/results"
	"github.com/sluice-gw/sluice/results/bolt"
	"github.com/sluice-gw/sluice/results/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, ttl time.Duration) (a, b results.Store) {
		s, err := bolt.Open(bolt.Options{Dir: t.TempDir(), TTL: ttl})
		if err != nil {
			t.Fatal(err)
		}
		storetest.Running(t, s)
		return s, s // one bbolt file has one opener
	})
}
