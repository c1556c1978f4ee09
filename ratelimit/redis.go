package ratelimit

import (
	"context"
	"math"
	"sync/atomic"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

const (
	// redisTimeout bounds one call to Redis; past it the call is decided
	// by the local limiter.
	redisTimeout = 100 * time.Millisecond
	// redisRetry is how long Redis is left alone after it failed: calls go
	// straight to the local limiter, and then one call tries Redis again,
	// so a Redis that hangs delays one request a second, not every one.
	redisRetry = time.Second
	// warnEvery spaces the warnings that Redis is failing.
	warnEvery = 10 * time.Second
)

// Redis is a Limiter shared by every process that uses the same Redis and
// prefix: a GCRA in Redis (go-redis/redis_rate), one script call per Allow,
// timed by the Redis server's clock, so the budget holds for all processes
// together however many there are.
//
// When Redis fails or takes longer than 100 ms, the call is decided by the
// local limiter instead, which gives each process the whole budget: the
// limit loosens while Redis is away, but traffic is never refused for want
// of the limiter's store. Allow never returns an error. A warning is
// logged at most every 10 s while this goes on.
//
// The deadline reaches a slow socket only when the go-redis client has
// ContextTimeoutEnabled; without it a hung Redis holds a call until the
// client's ReadTimeout. The client should also have MaxRetries -1: the
// script charges the budget, so a retry may charge it twice.
type Redis struct {
	rl      *redis_rate.Limiter
	prefix  string
	local   *Local
	log     zerolog.Logger
	timeout time.Duration
	now     func() int64

	downUntil atomic.Int64 // when Redis is tried again after a failure; 0 while it works
	nextWarn  atomic.Int64 // when a failure may be logged again
	fellBack  atomic.Int64 // calls decided locally since the last warning
}

// NewRedis returns a Limiter on rdb whose keys are prefix+"rl:"+key
// (redis_rate puts "rate:" in front of that; the keys expire once their
// bucket is full). fallback decides while Redis fails; nil gives it a Local
// of its own. It starts nothing.
func NewRedis(rdb redis.UniversalClient, prefix string, fallback *Local, log zerolog.Logger) *Redis {
	if fallback == nil {
		fallback = NewLocal()
	}
	start := time.Now()
	return &Redis{
		rl: redis_rate.NewLimiter(rdb), prefix: prefix + "rl:", local: fallback, log: log,
		timeout: redisTimeout, now: func() int64 { return int64(time.Since(start)) },
	}
}

// Allow decides for one request under key; its error is always nil.
func (r *Redis) Allow(ctx context.Context, key string, l Limit) (Result, error) {
	now := r.now()
	if down := r.downUntil.Load(); down != 0 {
		// While Redis is down only the one call that wins the swap tries it.
		if now < down || !r.downUntil.CompareAndSwap(down, now+int64(redisRetry)) {
			r.fellBack.Add(1)
			return r.local.allow(key, l), nil
		}
	}
	cctx, cancel := context.WithTimeout(ctx, r.timeout)
	res, err := r.rl.Allow(cctx, r.prefix+key, redisLimit(l))
	cancel()
	if err != nil {
		if ctx.Err() == nil { // not the caller giving up: Redis failed
			r.failed(err)
		}
		r.fellBack.Add(1)
		return r.local.allow(key, l), nil
	}
	if r.downUntil.Load() != 0 {
		r.downUntil.Store(0)
	}
	burst := max(l.Burst, 1)
	out := Result{Allowed: res.Allowed > 0, Limit: burst, Remaining: max(res.Remaining, 0), Reset: max(res.ResetAfter, 0)}
	if !out.Allowed {
		out.RetryAfter = max(res.RetryAfter, 1)
	}
	return out, nil
}

// failed sends calls to the local limiter for a while and logs err if no
// warning went out lately.
func (r *Redis) failed(err error) {
	now := r.now()
	r.downUntil.Store(now + int64(redisRetry))
	next := r.nextWarn.Load()
	if now < next || !r.nextWarn.CompareAndSwap(next, now+int64(warnEvery)) {
		return
	}
	r.log.Warn().Err(err).Int64("local_decisions", r.fellBack.Swap(0)).
		Msg("ratelimit: redis unavailable; each process limits on its own")
}

// redisLimit converts l to redis_rate's Rate requests per Period. Only
// Period/Rate (the emission interval) and Burst matter to the GCRA, so the
// conversion looks for an exact one: a whole rate per second, else the
// shortest period of whole seconds (up to 1000) in which the rate is a
// whole number (0.5 is 1 per 2 s, 2.5 is 5 per 2 s), else one request per
// interval rounded to the nanosecond.
func redisLimit(l Limit) redis_rate.Limit {
	burst := max(l.Burst, 1)
	r := l.Rate
	if r >= 1 && r == math.Trunc(r) && r < 1<<31 {
		return redis_rate.Limit{Rate: int(r), Period: time.Second, Burst: burst}
	}
	if r > 0 && r < 1<<31 {
		for d := 2.0; d <= 1000; d++ {
			n := math.Round(r * d)
			if n >= 1 && math.Abs(r*d-n) <= 1e-9*n {
				return redis_rate.Limit{Rate: int(n), Period: time.Duration(d) * time.Second, Burst: burst}
			}
		}
	}
	return redis_rate.Limit{Rate: 1, Period: time.Duration(interval(r, burst)), Burst: burst}
}
