// Package job is sluice's domain: a client request waiting for delivery
// (Request), the status events workers report about it (Event), the record
// clients poll (Record) with the rule that merges events into it
// (Record.Apply, Status.Rank), the log of a request's attempts that travels
// with it (AttemptLog), request ids, idempotency claims, and a backend's
// answer as it is kept (Response).
//
// It is plain Go and imports no other sluice package and no net/http:
// ingress, workers and results agree on it without importing each other,
// and how its types travel or are shown lives with the adapters that need
// it — the broker codec in package wire, header forwarding and the polling
// JSON in ingress, the HTTP attempt in workers.
package job
