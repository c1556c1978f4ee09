// Package workers delivers queued requests to backends: one Pool per
// backend, each behind its own Limiter (rate, burst, concurrency — fixed,
// or adaptive: found by AIMD from the backend's answers —, pause, circuit
// breaker with half-open probes) and HTTP client, so one backend's trouble
// never slows another's. A failed attempt that may be retried is republished with a
// not-before time (exponential backoff with jitter, or the backend's
// Retry-After) and acknowledged, so no worker sleeps on it; an exhausted one
// goes to the backend's dead-letter topic. Every outcome is published to the
// result topic before the request message is acknowledged.
package workers
