// Package admin is sluice's operator API on the admin listener (net/http):
// health and readiness, live backend tuning (rate, burst, concurrency,
// pause) — for every process of the deployment and kept, through Cluster
// (cluster.Node), with every worker's figures —, dead-letter listing and replay, metering, GET /metrics (the
// handler package metrics builds, set by the gateway), and the dashboard.
//
// History samples every backend's status and backlog every 2 s into a ring
// of 10 minutes (GET /admin/history), so the dashboard shows the last
// minutes as soon as it opens; the gateway runs it (History.Run) next to
// the admin server. The dashboard is the embedded folder ui/: index.html at
// /, its scripts and styles (uPlot vendored in ui/vendor/uplot) at /ui/.
//
// With admin_token set, every call needs "Authorization: Bearer <token>"
// but /healthz and the dashboard's page and static files, which hold no
// data: the page asks for the token and sends it with each API call.
// Changes sent by a browser from another origin's page are refused.
package admin
