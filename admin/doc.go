// Package admin is sluice's operator API on the admin listener (net/http):
// health and readiness, live backend tuning (rate, burst, concurrency,
// pause), dead-letter listing and replay, and GET /metrics (the handler
// package metrics builds, set by the gateway). With admin_token set, every
// call but /healthz needs "Authorization: Bearer <token>".
package admin
