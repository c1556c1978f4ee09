// Package admin is sluice's operator API on the admin listener (net/http):
// health and readiness, live backend tuning (rate, burst, concurrency,
// pause) and dead-letter listing and replay. With admin_token set, every
// call but /healthz needs "Authorization: Bearer <token>".
package admin
