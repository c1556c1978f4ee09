// Package job is the wire format shared by sluice's roles: a client request
// as it waits in a broker topic (Request), the status events workers send to
// the result topic (Event), and the record clients poll (Record), with the
// rule that merges events into a record. It is a leaf next to broker, so that
// ingress, workers and results agree on it without importing each other.
package job
