package results

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-gw/sluice/job"
)

// DefaultMaxPending is how many accepted records may wait in memory to be
// written before Admit refuses more.
const DefaultMaxPending = 100000

// flushChunk is the most accepted records written in one transaction or
// pipeline: a backlog built up while the store was away goes out in
// pieces that each fit their timeout, and each piece leaves the queue as
// soon as it is written.
const flushChunk = 1000

// acceptQueue holds records of just-accepted requests in memory until the
// store has written them in a batch. A queued record stays readable until
// its write is done, so an accepted id never reads as unknown — provided
// readers look at the store again after missing in the queue (see
// Embedded.Get).
type acceptQueue struct {
	mu  sync.Mutex
	m   map[string]*job.Record
	n   atomic.Int64 // len(m), for admit: every submit asks, none locks
	max int

	afterMiss func() // test hook: lookup, between the first read and the queue
}

func newAcceptQueue(max int) *acceptQueue {
	if max <= 0 {
		max = DefaultMaxPending
	}
	return &acceptQueue{m: map[string]*job.Record{}, max: max}
}

// admit reports ErrUnavailable once max records wait. Accept itself never
// refuses: the request behind it is queued already, its record must be
// kept. So the bound holds up to the submits admitted at the same moment.
func (q *acceptQueue) admit() error {
	if n := q.n.Load(); n >= int64(q.max) {
		return fmt.Errorf("%w: %d accepted records wait to be written", ErrUnavailable, n)
	}
	return nil
}

func (q *acceptQueue) put(r *job.Record) {
	q.mu.Lock()
	q.m[r.ID] = r
	q.n.Store(int64(len(q.m)))
	q.mu.Unlock()
}

// lookup finds id's record: read from the store, else in the queue, else
// read again — a flush may write it and leave the queue between the first
// two looks, and the record must never seem gone. read returns nil for an
// id it does not hold.
func (q *acceptQueue) lookup(id string, read func() (*job.Record, error)) (*job.Record, error) {
	rec, err := read()
	if err != nil || rec != nil {
		return rec, err
	}
	if q.afterMiss != nil {
		q.afterMiss()
	}
	if rec = q.get(id); rec != nil {
		return rec, nil
	}
	return read()
}

// get returns a copy of id's queued record, or nil.
func (q *acceptQueue) get(id string) *job.Record {
	q.mu.Lock()
	defer q.mu.Unlock()
	if r := q.m[id]; r != nil {
		cp := *r
		return &cp
	}
	return nil
}

func (q *acceptQueue) len() int { return int(q.n.Load()) }

// batch returns up to n queued records, still queued.
func (q *acceptQueue) batch(n int) []*job.Record {
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

// written drops the records of a batch that was written, unless they were
// replaced meanwhile.
func (q *acceptQueue) written(batch []*job.Record) {
	q.mu.Lock()
	for _, r := range batch {
		if q.m[r.ID] == r {
			delete(q.m, r.ID)
		}
	}
	q.n.Store(int64(len(q.m)))
	q.mu.Unlock()
}

// forget drops ids whose records an event wrote.
func (q *acceptQueue) forget(ids []string) {
	q.mu.Lock()
	for _, id := range ids {
		delete(q.m, id)
	}
	q.n.Store(int64(len(q.m)))
	q.mu.Unlock()
}

// every calls f each interval until stop closes.
func every(interval time.Duration, stop <-chan struct{}, f func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			f()
		}
	}
}
