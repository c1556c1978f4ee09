package retry

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestBackoffGrowsToMost(t *testing.T) {
	b := Backoff(10*time.Millisecond, 40*time.Millisecond)
	var last time.Duration
	for i := range 20 {
		d := b.NextBackOff()
		if d < 8*time.Millisecond || d > 48*time.Millisecond {
			t.Fatalf("wait %d: %s, want within 10 ms..40 ms ±20%%", i, d)
		}
		last = d
	}
	if last < 32*time.Millisecond {
		t.Fatalf("after 20 waits: %s, want near 40 ms", last)
	}
}

func TestDoStopsOnSuccessPermanentOrContext(t *testing.T) {
	calls := 0
	n, err := Value(context.Background(), Backoff(time.Millisecond, time.Millisecond), func() (int, error) {
		if calls++; calls < 3 {
			return 0, errors.New("not yet")
		}
		return calls, nil
	})
	if err != nil || n != 3 {
		t.Fatalf("Do = %d, %v; want 3 after two failures", n, err)
	}

	boom := errors.New("boom")
	calls = 0
	err = Do(context.Background(), Backoff(time.Millisecond, time.Millisecond), func() error {
		calls++
		return Permanent(boom)
	})
	if !errors.Is(err, boom) || calls != 1 {
		t.Fatalf("permanent: %v after %d calls, want boom after 1", err, calls)
	}

	ctx, cancel := context.WithCancel(context.Background())
	start := time.Now()
	go func() { time.Sleep(20 * time.Millisecond); cancel() }()
	err = Do(ctx, Backoff(time.Hour, time.Hour), func() error { return errors.New("down") })
	if !errors.Is(err, context.Canceled) || time.Since(start) > 5*time.Second {
		t.Fatalf("canceled: %v after %s, want context.Canceled at once", err, time.Since(start))
	}
}

func TestSleep(t *testing.T) {
	if !Sleep(context.Background(), time.Millisecond) {
		t.Fatal("Sleep did not wait the whole time")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if Sleep(ctx, time.Hour) {
		t.Fatal("Sleep waited out an ended context")
	}
}
