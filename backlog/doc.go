// Package backlog keeps a recent view of the request topics' backlogs and
// drain rates, so that the hot paths never ask the broker themselves:
// ingress answers Retry-After and admits against max_backlog from it, the
// admin API shows it.
//
// A Monitor polls the broker's Stats (the broker.Broker port, or anything
// with that one method) from its Run loop; New starts nothing. Ingress adds
// what it publishes between polls with Add, so the depth stays current.
// Estimate turns a topic's backlog into a wait for one more message.
// DrainFrom adds what every worker process reports taking (cluster
// figures), for brokers that count only this process's acknowledgements.
package backlog
