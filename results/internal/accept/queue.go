package accept

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/sluice-gw/sluice/job"
	"github.com/sluice-gw/sluice/results"
)

// Chunk is the most accepted records written in one transaction or
// pipeline: a backlog built up while the store was away goes out in
// pieces that each fit their timeout, and each piece leaves the queue as
// soon as it is written.
const Chunk = 1000

// Queue holds records of just-accepted requests in memory until the
// store has written them in a batch. A queued record stays readable until
// its write is done, so an accepted id never reads as unknown — provided
// readers look at the store again after missing in the queue (Lookup).
// It is safe for concurrent use.
type Queue struct {
	mu  sync.Mutex
	m   map[string]*job.Record
	n   atomic.Int64 // len(m), for Admit: every submit asks, none locks
	max int

	// AfterMiss is a test hook, nil outside tests: Lookup calls it between
	// its first read and its look in the queue.
	AfterMiss func()
}

// New returns a queue whose Admit refuses once max records wait (the
// adapters' options default it).
func New(max int) *Queue {
	return &Queue{m: map[string]*job.Record{}, max: max}
}

// Admit reports results.ErrUnavailable once max records wait. Put itself
// never refuses: the request behind it is queued already, its record
// must be kept. So the bound holds up to the submits admitted at the same
// moment.
func (q *Queue) Admit() error {
	if n := q.n.Load(); n >= int64(q.max) {
		return fmt.Errorf("%w: %d accepted records wait to be written", results.ErrUnavailable, n)
	}
	return nil
}

// Put queues r, replacing a queued record of the same id.
func (q *Queue) Put(r *job.Record) {
	q.mu.Lock()
	q.m[r.ID] = r
	q.n.Store(int64(len(q.m)))
	q.mu.Unlock()
}

// Lookup finds id's record: read from the store, else in the queue, else
// read again — a flush may write it and leave the queue between the first
// two looks, and the record must never seem gone. read returns nil for an
// id it does not hold.
func (q *Queue) Lookup(id string, read func() (*job.Record, error)) (*job.Record, error) {
	rec, err := read()
	if err != nil || rec != nil {
		return rec, err
	}
	if q.AfterMiss != nil {
		q.AfterMiss()
	}
	if rec = q.Get(id); rec != nil {
		return rec, nil
	}
	return read()
}

// Get returns a copy of id's queued record, or nil.
func (q *Queue) Get(id string) *job.Record {
	q.mu.Lock()
	defer q.mu.Unlock()
	if r := q.m[id]; r != nil {
		cp := *r
		return &cp
	}
	return nil
}

// Len is how many records wait.
func (q *Queue) Len() int { return int(q.n.Load()) }

// Batch returns up to n queued records, still queued.
func (q *Queue) Batch(n int) []*job.Record {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := make([]*job.Record, 0, min(n, len(q.m)))
	for _, r := range q.m {
		if len(out) == n {
			break
		}
		out = append(out, r)
	}
	return out
}

// Written drops the records of a batch that was written, unless they were
// replaced meanwhile.
func (q *Queue) Written(batch []*job.Record) {
	q.mu.Lock()
	for _, r := range batch {
		if q.m[r.ID] == r {
			delete(q.m, r.ID)
		}
	}
	q.n.Store(int64(len(q.m)))
	q.mu.Unlock()
}

// Forget drops ids whose records an event wrote.
func (q *Queue) Forget(ids []string) {
	q.mu.Lock()
	for _, id := range ids {
		delete(q.m, id)
	}
	q.n.Store(int64(len(q.m)))
	q.mu.Unlock()
}
