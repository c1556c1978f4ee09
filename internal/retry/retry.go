// Package retry is the one way sluice waits between tries: backoff/v5's
// jittered exponential backoff, always bounded by a context. Every retry
// loop in the gateway (reconnects, republishes, store writes, polls) uses
// it, so a stop ends every wait at once.
package retry

import (
	"context"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// Backoff waits first, then half again as long each time (±20%), up to
// most. It never stops by itself: the context ends a retry.
func Backoff(first, most time.Duration) *backoff.ExponentialBackOff {
	b := &backoff.ExponentialBackOff{InitialInterval: first, RandomizationFactor: 0.2, Multiplier: 1.5, MaxInterval: most}
	b.Reset()
	return b
}

// Do calls op until it returns nil or an error wrapped with Permanent, or
// ctx ends, waiting by b between calls. It returns op's last error, or
// ctx's cause when ctx ended.
func Do(ctx context.Context, b backoff.BackOff, op func() error) error {
	_, err := Value(ctx, b, func() (struct{}, error) { return struct{}{}, op() })
	return err
}

// Value is Do for an op that makes something: it returns what the call
// that succeeded made.
func Value[T any](ctx context.Context, b backoff.BackOff, op func() (T, error)) (T, error) {
	return backoff.Retry(ctx, op, backoff.WithBackOff(b), backoff.WithMaxElapsedTime(0))
}

// Permanent marks err as not worth another try.
func Permanent(err error) error { return backoff.Permanent(err) }

// Sleep waits d, or less if ctx ends first; it reports whether it waited
// the whole d.
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
