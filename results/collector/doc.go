// Package collector moves status events from the broker's result topic
// into a results.Store, in batches, acknowledging each event only once
// the store committed it. It is the collector role of a sluice process;
// any number of collectors, in any number of processes, may share one
// topic and one store.
//
// A Collector is built by New (which starts nothing) and runs in Run until
// its context ends. At shutdown the caller calls StopBy first: Run then
// keeps storing what workers published while they stopped, until the
// result topic is empty or the deadline passes, so those outcomes are
// stored before the process exits.
package collector
