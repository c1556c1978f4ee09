package ratelimit

import (
	"context"
	"time"
)

// Limit is a budget: Rate requests per second on average, with bursts of
// up to Burst at once. Rate may be fractional (0.5 is one request every two
// seconds) and must be > 0; Burst below 1 counts as 1.
type Limit struct {
	Rate  float64
	Burst int
}

// Result is one decision and what the RateLimit headers say about it.
type Result struct {
	Allowed bool
	// Limit is the burst, the quota of a window (RateLimit-Limit).
	Limit int
	// Remaining is how many more requests would be allowed right now
	// (RateLimit-Remaining); never negative.
	Remaining int
	// RetryAfter is, when !Allowed, the wait until one more request is
	// allowed (> 0); zero when Allowed. Retry-After rounds it up to whole
	// seconds.
	RetryAfter time.Duration
	// Reset is the wait until the bucket is full again, exact; the
	// RateLimit-Reset header rounds it up to whole seconds.
	Reset time.Duration
}

// Limiter decides whether one more request under key fits in l. The key
// names the budget (the caller builds it from route and client); one key is
// always asked with the same Limit. Allow is safe for concurrent use and
// charges the request when it allows it; a refused request costs nothing.
type Limiter interface {
	Allow(ctx context.Context, key string, l Limit) (Result, error)
}

var (
	_ Limiter = (*Local)(nil)
	_ Limiter = (*Redis)(nil)
)
