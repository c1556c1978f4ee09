// Package record is how both result stores (results/bolt, results/redis)
// encode a job.Record: a compact binary form (Encode) led by the merge key
// — status code, generation, attempts — that the Redis merge script reads
// by position, and ending with the attempt log (about 12 bytes an
// attempt); Decode also reads the JSON records earlier releases wrote.
// It also holds the two event helpers both stores' Apply use: Project
// (the record one event makes) and GroupByID.
package record
