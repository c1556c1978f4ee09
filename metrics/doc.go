// Package metrics serves GET /metrics on the admin port: sluice's figures
// in the Prometheus text format (prometheus/client_golang, on a registry of
// its own with the Go runtime and process collectors).
//
// Nothing here runs per request or per delivery. Every sluice_* series is
// read at scrape time from counters the parts keep anyway: the ingress's
// metering (requests and bytes by client, route and status), the worker
// pools' Status (outcomes, attempts, in flight, limits, breaker, pause, and
// the attempt-duration histogram, the one figure kept for metrics alone)
// and the backlog monitor's estimates (queue depth, backlog seconds). So
// the cost of metrics falls on the scrape, not on ingest.
//
// Like admin, it sees workers through its value types and the other parts
// through small interfaces; the gateway wires it and hands admin its
// handler. No client_golang type leaves the package.
package metrics
