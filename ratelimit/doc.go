// Package ratelimit holds the per-client budgets of routes with
// rate_limit: ingress asks a Limiter on every request to such a route and
// answers 429 with Retry-After and the RateLimit-Limit, -Remaining and
// -Reset headers from the Result when it is refused.
//
// Both limiters are a GCRA (generic cell rate algorithm), a token bucket
// kept as one time per key. Local keeps them in memory for one process and
// forgets a key once its bucket has refilled. Redis keeps them in Redis
// (through go-redis/redis_rate) so that every ingress process shares one
// budget per key; when Redis fails it decides by a Local instead, so a
// lost Redis loosens the limit to one budget per process and never refuses
// traffic. Neither starts a goroutine.
package ratelimit
