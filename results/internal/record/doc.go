// Package record is how both result stores (results/bolt, results/redis)
// encode a job.Record: JSON without HTML escaping, led by the merge key
// [generation, attempts, status rank] that the Redis merge script reads by
// position. It also holds the two event helpers both stores' Apply use:
// Project (the record one event makes) and GroupByID.
package record
