// Package bolt is the results.Store of a single sluice process: records
// and idempotency keys in a bbolt file on local disk (Options.Dir). Open
// opens the file and starts nothing; Run writes accepted records in
// batches and sweeps expired ones until its context ends, then writes
// what is still in memory; Close closes the file. It passes the
// conformance suite in results/storetest.
package bolt
