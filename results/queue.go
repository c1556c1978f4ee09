package results

import (
	"sync"
	"time"

	"github.com/sluice-gw/sluice/job"
)

// acceptQueue holds records of just-accepted requests in memory until the
// store has written them in a batch. A queued record stays readable until
// its write is done, so an accepted id never reads as unknown.
type acceptQueue struct {
	mu sync.Mutex
	m  map[string]*job.Record
}

func newAcceptQueue() acceptQueue { return acceptQueue{m: map[string]*job.Record{}} }

func (q *acceptQueue) put(r *job.Record) {
	q.mu.Lock()
	q.m[r.ID] = r
	q.mu.Unlock()
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

// batch returns what is queued now, still queued.
func (q *acceptQueue) batch() []*job.Record {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := make([]*job.Record, 0, len(q.m))
	for _, r := range q.m {
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
	q.mu.Unlock()
}

// forget drops ids whose records an event wrote.
func (q *acceptQueue) forget(ids []string) {
	q.mu.Lock()
	for _, id := range ids {
		delete(q.m, id)
	}
	q.mu.Unlock()
}

// every calls f each interval until stop closes, and once more then.
func every(interval time.Duration, stop <-chan struct{}, f func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			f()
			return
		case <-t.C:
			f()
		}
	}
}
