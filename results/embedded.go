package results

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sluice-gw/sluice/job"
)

var (
	bucketRecords = []byte("records") // recordKey(id) -> storedRecord JSON
	bucketIdem    = []byte("idempotency")
)

// sweepChunk is the most keys one sweep transaction looks at: the sweep
// holds bbolt's single write lock only that long, so submits (Accept's
// flush, Claim) and collectors (Apply) wait at most one chunk behind it.
const sweepChunk = 1000

// Embedded is a Store in a bbolt file on local disk, for one process.
// Records expire ttl after their last update. New requests (Accept) are
// kept in memory and written in batches every few milliseconds; events
// (Apply) are committed before Apply returns. OpenEmbedded starts a flush
// loop and an hourly-ish sweeper; Close stops both, waits for them and
// writes what is still queued.
type Embedded struct {
	db        *bolt.DB
	ttl       time.Duration
	hub       hub
	now       func() time.Time
	stop      chan struct{}
	closeOnce sync.Once
	closeErr  error
	done      sync.WaitGroup

	queue *acceptQueue // accepted, not yet on disk

	// Test hooks, nil outside tests.
	afterSweepTx func(examined, gone int) // Sweep: after each committed chunk
}

var _ Store = (*Embedded)(nil)

// storedClaim is an idempotency key's binding on disk. State is "owned"
// (Lease says until when), "released" (the owner's publish failed or its
// outcome is unknown: the next claimant owns ID) or "queued"; an empty
// State is a binding written before claims had states, which only ever
// bound queued requests.
type storedClaim struct {
	ID     string    `json:"id"`
	State  string    `json:"state,omitempty"`
	Lease  time.Time `json:"lease,omitzero"`
	Expiry time.Time `json:"expiry"`
}

const (
	claimOwned    = "owned"
	claimReleased = "released"
	claimQueued   = "queued"
)

// OpenEmbedded opens (or creates) the store in dir.
func OpenEmbedded(dir string, ttl time.Duration) (*Embedded, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("result store: %w", err)
	}
	db, err := bolt.Open(filepath.Join(dir, "results.db"), 0o644, &bolt.Options{
		Timeout: 5 * time.Second, NoFreelistSync: true,
	})
	if err != nil {
		return nil, fmt.Errorf("result store: %w", err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketRecords, bucketIdem} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("result store: %w", err)
	}
	// Claims and releases go through db.Batch, which commits concurrent
	// ones together; bbolt's default wait of 10ms for company would add
	// that much to every submit with an Idempotency-Key.
	db.MaxBatchDelay = 2 * time.Millisecond
	s := &Embedded{db: db, ttl: ttl, now: time.Now, stop: make(chan struct{}),
		queue: newAcceptQueue(DefaultMaxPending), hub: hub{w: map[string][]chan struct{}{}}}
	s.done.Add(2)
	go func() { defer s.done.Done(); every(50*time.Millisecond, s.stop, func() { _ = s.flush() }) }()
	go func() { defer s.done.Done(); every(time.Minute, s.stop, s.Sweep) }()
	return s, nil
}

// Admit implements Store: it refuses once DefaultMaxPending accepted
// records wait for the disk.
func (s *Embedded) Admit() error { return s.queue.admit() }

// Accept keeps rec in memory until the next flush.
func (s *Embedded) Accept(_ context.Context, rec *job.Record) error {
	s.queue.put(rec)
	return nil
}

// flush writes the queued accepted records that have no record on disk
// yet, flushChunk per transaction. It writes at most what was queued when
// it began, so a steady stream of submits cannot keep it from returning.
// Records whose write failed stay queued for the next flush.
func (s *Embedded) flush() error {
	for left := s.queue.len(); left > 0; left -= flushChunk {
		batch := s.queue.batch(flushChunk)
		if len(batch) == 0 {
			return nil
		}
		err := s.db.Update(func(tx *bolt.Tx) error {
			recs := tx.Bucket(bucketRecords)
			for _, r := range batch {
				if recs.Get(recordKey(r.ID)) != nil {
					continue // an event got there first; it is newer
				}
				if err := s.put(tx, r); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		s.queue.written(batch)
	}
	return nil
}

// recordKey is the bucket key of id: its decoded bytes, which start with
// the acceptance time for ids ingress made, so new records append to the
// tree instead of dirtying pages all over it.
func recordKey(id string) []byte {
	if b, err := base64.RawURLEncoding.DecodeString(id); err == nil {
		return b
	}
	return []byte(id)
}

// put writes r.
func (s *Embedded) put(tx *bolt.Tx, r *job.Record) error {
	v, err := encodeRecord(r)
	if err != nil {
		return err
	}
	recs := tx.Bucket(bucketRecords)
	recs.FillPercent = 0.9 // mostly appends
	return recs.Put(recordKey(r.ID), v)
}

// read returns id's record on disk, or nil.
func (s *Embedded) read(id string) (*job.Record, error) {
	var rec *job.Record
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketRecords).Get(recordKey(id))
		if v == nil {
			return nil
		}
		r, err := decodeRecord(v)
		rec = r
		return err
	})
	return rec, err
}

// Get reads id's record from disk, or from the accepted records in memory.
// A record leaves memory only after it is on disk, but it may do so
// between the two looks: so a miss in memory is followed by a second look
// on disk, else a poll right after the 202 could answer 404.
func (s *Embedded) Get(_ context.Context, id string) (*job.Record, error) {
	rec, err := s.queue.lookup(id, func() (*job.Record, error) { return s.read(id) })
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if rec == nil || s.now().After(rec.UpdatedAt.Add(s.ttl)) {
		return nil, ErrNotFound
	}
	return rec, nil
}

// Apply merges events in one transaction, then wakes the watchers of every
// record that changed. bbolt has one writer at a time, so the read, merge
// and write of a record cannot interleave with another Apply.
func (s *Embedded) Apply(_ context.Context, events []*job.Event) error {
	// Grouped by id, so a record with several events in the batch (in_flight
	// then succeeded, typically) is read and written once.
	order, byID := groupByID(events)
	changed := make([]string, 0, len(order))
	err := s.db.Update(func(tx *bolt.Tx) error {
		changed = changed[:0]
		recs := tx.Bucket(bucketRecords)
		for _, id := range order {
			var old *job.Record
			onDisk := false
			if v := recs.Get(recordKey(id)); v != nil {
				r, err := decodeRecord(v)
				if err != nil {
					return err
				}
				old, onDisk = r, true
			} else {
				old = s.queue.get(id)
			}
			var cur job.Record
			if old != nil {
				cur = *old
			}
			applied := false
			for _, e := range byID[id] {
				applied = cur.Apply(e) || applied
			}
			if !applied {
				if old != nil && !onDisk { // an older event: still write the accepted record
					if err := s.put(tx, old); err != nil {
						return err
					}
				}
				continue
			}
			if err := s.put(tx, &cur); err != nil {
				return err
			}
			changed = append(changed, id)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	s.queue.forget(order)
	for _, id := range changed {
		s.hub.notify(id)
	}
	return nil
}

// Watch implements Store.
func (s *Embedded) Watch(id string) (<-chan struct{}, func()) { return s.hub.watch(id) }

func claimKey(client, key string) []byte { return []byte(client + "\x00" + key) }

// Claim implements Store in one write transaction: bbolt's single writer
// makes the read and the binding one step.
func (s *Embedded) Claim(_ context.Context, client, key, id string, lease time.Duration) (Claim, error) {
	k := claimKey(client, key)
	var out Claim
	// Batch may run the function again on its own after a failed batch, so
	// it sets out from scratch each time.
	err := s.db.Batch(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketIdem)
		now := s.now()
		own := func(boundID string) error {
			out = Claim{ID: boundID, State: ClaimOwned}
			v, _ := json.Marshal(storedClaim{ID: boundID, State: claimOwned,
				Lease: now.Add(lease), Expiry: now.Add(s.ttl)})
			return b.Put(k, v)
		}
		var c storedClaim
		if v := b.Get(k); v == nil || json.Unmarshal(v, &c) != nil || !now.Before(c.Expiry) {
			return own(id) // free, unreadable, or past the ttl
		}
		switch {
		case c.State == claimQueued || c.State == "":
			out = Claim{ID: c.ID, State: ClaimQueued}
			return nil
		case c.State == claimOwned && now.Before(c.Lease):
			out = Claim{ID: c.ID, State: ClaimPending}
			return nil
		}
		// Released, or its owner's lease ran out: that id may have been
		// written; the caller publishes the same one again.
		return own(c.ID)
	})
	if err != nil {
		return Claim{}, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return out, nil
}

// Release implements Store. It changes nothing unless id owns the key.
func (s *Embedded) Release(_ context.Context, client, key, id string, queued bool) error {
	k := claimKey(client, key)
	err := s.db.Batch(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketIdem)
		now := s.now()
		var c storedClaim
		v := b.Get(k)
		if v == nil || json.Unmarshal(v, &c) != nil || !now.Before(c.Expiry) ||
			c.State != claimOwned || c.ID != id {
			return nil
		}
		if queued {
			c = storedClaim{ID: id, State: claimQueued, Expiry: now.Add(s.ttl)}
		} else {
			c = storedClaim{ID: id, State: claimReleased, Expiry: c.Expiry}
		}
		v, _ = json.Marshal(c)
		return b.Put(k, v)
	})
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return nil
}

// Sweep deletes expired records and idempotency keys, sweepChunk keys per
// write transaction, so nothing waits long behind it. Record keys start
// with the acceptance time and a record expires ttl after its last update,
// never sooner than ttl after acceptance; so only keys accepted before
// now-ttl need a look, oldest first. Close interrupts it between chunks.
func (s *Embedded) Sweep() {
	now := s.now()
	cutoff := now.Add(-s.ttl)
	s.sweepBucket(bucketRecords, func(k, v []byte) (dead, stop bool) {
		if at, ok := job.IssuedAtRaw(k); ok && at.After(cutoff) {
			return false, true
		}
		r, err := decodeRecord(v)
		return err != nil || now.After(r.UpdatedAt.Add(s.ttl)), false
	})
	s.sweepBucket(bucketIdem, func(_, v []byte) (dead, stop bool) {
		var c storedClaim
		return json.Unmarshal(v, &c) != nil || !now.Before(c.Expiry), false
	})
}

// sweepBucket walks bucket in key order, one short transaction per
// sweepChunk keys, deleting those judge calls dead, until judge says stop.
func (s *Embedded) sweepBucket(bucket []byte, judge func(k, v []byte) (dead, stop bool)) {
	var from []byte // where the next chunk starts; nil: the first key
	for {
		select {
		case <-s.stop:
			return
		default:
		}
		examined, gone, finished := 0, 0, false
		err := s.db.Update(func(tx *bolt.Tx) error {
			examined, gone, finished = 0, 0, false
			b := tx.Bucket(bucket)
			c := b.Cursor()
			k, v := c.First()
			if from != nil {
				k, v = c.Seek(from)
			}
			var dead [][]byte
			for ; ; k, v = c.Next() {
				if k == nil {
					finished = true
					break
				}
				if examined == sweepChunk {
					from = bytes.Clone(k)
					break
				}
				examined++
				isDead, stop := judge(k, v)
				if stop {
					finished = true
					break
				}
				if isDead {
					dead = append(dead, bytes.Clone(k))
				}
			}
			for _, k := range dead {
				if err := b.Delete(k); err != nil {
					return err
				}
			}
			gone = len(dead)
			return nil
		})
		if s.afterSweepTx != nil {
			s.afterSweepTx(examined, gone)
		}
		if err != nil || finished {
			return // a failed chunk is swept again next time
		}
	}
}

// Ping implements Store.
func (s *Embedded) Ping(context.Context) error { return nil }

// Close stops the flush loop and the sweeper, waits for them, writes the
// accepted records still in memory and closes the file. Later calls
// return the first call's result.
func (s *Embedded) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		s.done.Wait()
		err := s.flush()
		if err != nil {
			err = fmt.Errorf("result store: writing %d accepted records: %w", s.queue.len(), err)
		}
		s.closeErr = errors.Join(err, s.db.Close())
	})
	return s.closeErr
}

// hub wakes pollers waiting on an id.
type hub struct {
	mu sync.Mutex
	w  map[string][]chan struct{}
}

func (h *hub) watch(id string) (<-chan struct{}, func()) {
	ch := make(chan struct{})
	h.mu.Lock()
	h.w[id] = append(h.w[id], ch)
	h.mu.Unlock()
	return ch, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		list := h.w[id]
		for i, c := range list {
			if c == ch {
				list = append(list[:i], list[i+1:]...)
				break
			}
		}
		if len(list) == 0 {
			delete(h.w, id)
		} else {
			h.w[id] = list
		}
	}
}

func (h *hub) notify(id string) {
	h.mu.Lock()
	list := h.w[id]
	delete(h.w, id)
	h.mu.Unlock()
	for _, c := range list {
		close(c)
	}
}

// notifyAll wakes every watcher: after announcements may have been missed
// (a lost subscription), each poller reads its record again.
func (h *hub) notifyAll() {
	h.mu.Lock()
	w := h.w
	h.w = map[string][]chan struct{}{}
	h.mu.Unlock()
	for _, list := range w {
		for _, c := range list {
			close(c)
		}
	}
}
