// Package results keeps the outcome of every accepted request. It is the
// port: the Store interface that ingress polls and collectors write, its
// errors and claim types. The adapters live beside it — results/bolt, a
// bbolt file for one process, and results/redis, shared by every process
// — and results/collector moves status events from the result topic into
// a Store. Importing results pulls in neither bbolt nor go-redis.
//
// Both stores keep the same promises, which the conformance suite in
// results/storetest holds them to:
//
//   - Accept never waits or fails: accepted records wait in memory and
//     are written in chunks. Get looks in the store, then in memory, then
//     in the store again (a record leaves memory only once written, maybe
//     between the first two looks), so an id is pollable as soon as its
//     202 is sent. Admit refuses new submits while too many records wait,
//     which bounds that memory while a store is away.
//   - Apply merges events by job.Record.Apply's rule, atomically per
//     record: bbolt in one write transaction; Redis in a script that
//     compares the merge key ([generation, attempts, status rank]) each
//     stored record leads with, so collectors in several processes lose
//     no update and events may arrive in any order.
//   - Claim and Release bind a client's idempotency key to one request id
//     for the ttl: owned by one submit for a lease while it publishes,
//     then queued, or released (publish failed or unknown) for the next
//     claimant to publish the same id again.
//   - Records are stored in a compact binary form (results/internal/record):
//     a succeeded request without a kept response takes about 30 bytes
//     (its JSON took 280), a body is kept byte for byte, and a poll of a
//     decoded record answers the same bytes as before. Records written
//     as JSON by earlier releases are still read.
//   - A record lives its route's ttl after its last update: Redis
//     expires each key by itself; bbolt keeps records in one file per
//     window of expiry times and removes a whole file once its window has
//     passed, so expired records cost nothing to drop and their disk
//     space comes back.
//   - A store's constructor opens it and starts nothing. Run starts its
//     goroutines (flush loop, sweeper or change listener) and owns them:
//     when its ctx ends they stop, the records still in memory are
//     written (for a bounded time with Redis), and Run returns. Close
//     then releases the file or the connections.
package results
