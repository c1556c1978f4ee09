// Package demo is a deliberately slow and fragile HTTP backend to put behind
// sluice: it takes a configurable time per request, fails a configurable
// share of requests with 503, and answers 429 with Retry-After once more
// requests arrive than its capacity (in flight) or rate (per second) allows.
// `sluice demo-backend` runs it; tests use it in-process.
package demo
