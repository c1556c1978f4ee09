package broker

import (
	"testing"
	"time"
)

func TestDelayTier(t *testing.T) {
	cases := []struct {
		wait time.Duration
		want time.Duration
		ok   bool
	}{
		{50 * time.Millisecond, 0, false},
		{100 * time.Millisecond, 100 * time.Millisecond, true},
		{300 * time.Millisecond, 100 * time.Millisecond, true},
		{1500 * time.Millisecond, time.Second, true},
		{45 * time.Second, 30 * time.Second, true},
		{5 * time.Hour, time.Hour, true},
	}
	for _, c := range cases {
		got, ok := DelayTier(c.wait)
		if got != c.want || ok != c.ok {
			t.Errorf("DelayTier(%v) = %v, %v; want %v, %v", c.wait, got, ok, c.want, c.ok)
		}
	}
}
