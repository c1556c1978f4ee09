// Package gateway runs sluice. New checks a config and the roles this
// process plays and starts nothing; Run opens the broker and the result
// store, applies the stored tunings (cluster.Node.Restore), starts the
// ingress, the worker pools, the collector, the backlog monitor, the
// cluster node, the admin API and its history under one group that owns every
// goroutine, and when its context ends stops them in the order written in
// (*Gateway).stop: intake, then deliveries, then the collector, then the
// stores.
//
// gateway is the only package that knows every concrete piece: cmd/sluice
// parses flags and loads the config, then calls New and Run.
package gateway
