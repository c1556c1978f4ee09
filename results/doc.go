// Package results keeps the outcome of every accepted request: the Store
// interface that ingress polls, an embedded Store on local disk (bbolt), and
// the Collector that moves status events from the result topic into a Store.
package results
