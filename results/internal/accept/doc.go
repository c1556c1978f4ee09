// Package accept is the memory both result stores (results/bolt,
// results/redis) keep accepted records in until their flush loop writes
// them: Accept never waits on the store, Get finds a record in the queue
// until it is written (Lookup: store, queue, store again), and Admit
// refuses new submits while too many records wait.
package accept
