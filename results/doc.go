// Package results keeps the outcome of every accepted request: the Store
// port that ingress polls and collectors write, its two adapters —
// Embedded, a bbolt file for one process, and Redis, shared by every
// process — and the Collector that moves status events from the result
// topic into a Store.
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
//   - Records are stored as JSON without HTML escaping (job.Marshal), so
//     a body keeps its size.
//   - OpenEmbedded and OpenRedis start the store's goroutines (flush loop,
//     sweeper or change listener); Close stops them, waits for them and
//     writes what is still in memory, for a bounded time with Redis.
package results
