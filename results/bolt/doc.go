// Package bolt is the results.Store of a single sluice process, in bbolt
// files on local disk (Options.Dir): records in one file per window of
// expiry times (records-<end>.db), removed whole once the window has
// passed; idempotency keys, and records written before windows existed,
// in results.db, swept key by key. Open opens the files and starts
// nothing; Run writes accepted records in batches, drops expired windows
// and sweeps results.db until its context ends, then writes what is
// still in memory; Close closes the files. It passes the conformance
// suite in results/storetest.
package bolt
