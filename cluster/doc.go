// Package cluster makes a backend's tuning and figures the deployment's,
// not one process's.
//
// A PATCH /admin/backends/<name> on any process is kept in a Store as a
// Tuning (only the fields the PATCH set) and announced; every process's
// Node applies it over the config within a second, re-reads every few
// seconds in case an announcement was lost, and applies the stored
// tunings again when it starts, so a worker that restarts comes up tuned.
// Each worker process's Node also reports its per-backend Figures every
// second, with an expiry, so that any process can show every worker's
// in-flight and delivered rate (a View).
//
// Two Stores: cluster/redis, shared by every process that uses the same
// Redis and key prefix (results.store: redis), and File, a file beside the
// embedded result store for a single process. The package imports nothing
// of ours: the gateway joins a Node to the worker pools with two
// functions (Options.Apply and Options.Local).
package cluster
