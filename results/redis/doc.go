// Package redis is the results.Store shared by every sluice process:
// records and idempotency keys in Redis, merged by Lua scripts atomically
// per record, with changes announced on a pub/sub channel that wakes long
// polls in every process. Open makes the client (it connects lazily) and
// starts nothing; Run writes accepted records in pipelined batches and
// relays announcements until its context ends, then writes what is still
// in memory for at most Options.StopTimeout; Close disconnects. It passes
// the conformance suite in results/storetest.
package redis
