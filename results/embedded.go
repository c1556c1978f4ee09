package results

import (
	"context"
	"encoding/base64"
	"encoding/json"
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

// Embedded is a Store in a bbolt file on local disk. Records expire ttl after
// their last update. New requests (Accept) are kept in memory and written in
// batches every few milliseconds; events (Apply) are committed before Apply
// returns.
type Embedded struct {
	db   *bolt.DB
	ttl  time.Duration
	hub  hub
	now  func() time.Time
	stop chan struct{}
	done sync.WaitGroup

	queue acceptQueue // accepted, not yet on disk
}

var _ Store = (*Embedded)(nil)

type storedRecord struct {
	*job.Record
	Client string `json:"client,omitempty"`
	Gen    int    `json:"gen,omitempty"`
}

type storedClaim struct {
	ID     string    `json:"id"`
	Expiry time.Time `json:"expiry"`
}

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
	s := &Embedded{db: db, ttl: ttl, now: time.Now, stop: make(chan struct{}),
		queue: newAcceptQueue(), hub: hub{w: map[string][]chan struct{}{}}}
	s.done.Add(2)
	go func() { defer s.done.Done(); every(50*time.Millisecond, s.stop, s.flush) }()
	go s.sweepLoop()
	return s, nil
}

// Accept keeps rec in memory until the next flush.
func (s *Embedded) Accept(_ context.Context, rec *job.Record) error {
	s.queue.put(rec)
	return nil
}

// flush writes queued accepted records that have no record on disk yet.
func (s *Embedded) flush() {
	batch := s.queue.batch()
	if len(batch) == 0 {
		return
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
	if err == nil { // else kept queued; tried again next tick
		s.queue.written(batch)
	}
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

// acceptedMillis reads the acceptance time an ingress id starts with.
func acceptedMillis(key []byte) (int64, bool) {
	if len(key) < 18 {
		return 0, false
	}
	var ms int64
	for _, b := range key[:6] {
		ms = ms<<8 | int64(b)
	}
	return ms, true
}

// put writes r.
func (s *Embedded) put(tx *bolt.Tx, r *job.Record) error {
	v, err := json.Marshal(storedRecord{Record: r, Client: r.Client, Gen: r.Gen})
	if err != nil {
		return err
	}
	recs := tx.Bucket(bucketRecords)
	recs.FillPercent = 0.9 // mostly appends
	return recs.Put(recordKey(r.ID), v)
}

func decodeRecord(v []byte) (*job.Record, error) {
	var sr storedRecord
	if err := json.Unmarshal(v, &sr); err != nil || sr.Record == nil {
		return nil, fmt.Errorf("result store: corrupt record: %v", err)
	}
	sr.Record.Client, sr.Record.Gen = sr.Client, sr.Gen
	return sr.Record, nil
}

// Get reads id's record from disk, or from the accepted records in memory.
func (s *Embedded) Get(_ context.Context, id string) (*job.Record, error) {
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
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if rec == nil {
		rec = s.queue.get(id)
	}
	if rec == nil || s.now().After(rec.UpdatedAt.Add(s.ttl)) {
		return nil, ErrNotFound
	}
	return rec, nil
}

// Apply merges events in one transaction, then wakes the watchers of every
// record that changed.
func (s *Embedded) Apply(_ context.Context, events []*job.Event) error {
	// Group by id, so a record with several events in the batch (in_flight
	// then succeeded, typically) is read and written once.
	byID := make(map[string][]*job.Event, len(events))
	order := make([]string, 0, len(events))
	for _, e := range events {
		if _, ok := byID[e.ID]; !ok {
			order = append(order, e.ID)
		}
		byID[e.ID] = append(byID[e.ID], e)
	}
	changed := make([]string, 0, len(order))
	err := s.db.Update(func(tx *bolt.Tx) error {
		changed = changed[:0]
		recs := tx.Bucket(bucketRecords)
		for _, id := range order {
			evs := byID[id]
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
			for _, e := range evs {
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

// Claim implements Store.
func (s *Embedded) Claim(_ context.Context, client, key, id string) (string, bool, error) {
	k := []byte(client + "\x00" + key)
	bound, created := id, false
	err := s.db.Batch(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketIdem)
		if v := b.Get(k); v != nil {
			var c storedClaim
			if json.Unmarshal(v, &c) == nil && s.now().Before(c.Expiry) {
				bound, created = c.ID, false
				return nil
			}
		}
		v, _ := json.Marshal(storedClaim{ID: id, Expiry: s.now().Add(s.ttl)})
		bound, created = id, true
		return b.Put(k, v)
	})
	if err != nil {
		return "", false, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return bound, created, nil
}

// Unclaim implements Store.
func (s *Embedded) Unclaim(_ context.Context, client, key string) error {
	return s.db.Batch(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketIdem).Delete([]byte(client + "\x00" + key))
	})
}

func (s *Embedded) sweepLoop() {
	defer s.done.Done()
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.Sweep()
		}
	}
}

// Sweep deletes expired records and idempotency keys. Record keys start
// with the acceptance time and a record expires ttl after its last update,
// never sooner than ttl after acceptance; so only keys accepted before
// now-ttl need a look, oldest first.
func (s *Embedded) Sweep() {
	now := s.now()
	cutoff := now.Add(-s.ttl).UnixMilli()
	_ = s.db.Update(func(tx *bolt.Tx) error {
		recs := tx.Bucket(bucketRecords)
		var dead [][]byte
		c := recs.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if ms, ok := acceptedMillis(k); ok && ms > cutoff {
				break
			}
			r, err := decodeRecord(v)
			if err != nil || now.After(r.UpdatedAt.Add(s.ttl)) {
				dead = append(dead, append([]byte(nil), k...))
			}
		}
		for _, k := range dead {
			_ = recs.Delete(k)
		}
		idem := tx.Bucket(bucketIdem)
		var stale [][]byte
		_ = idem.ForEach(func(k, v []byte) error {
			var c storedClaim
			if json.Unmarshal(v, &c) != nil || now.After(c.Expiry) {
				stale = append(stale, append([]byte(nil), k...))
			}
			return nil
		})
		for _, k := range stale {
			_ = idem.Delete(k)
		}
		return nil
	})
}

// Ping implements Store.
func (s *Embedded) Ping(context.Context) error { return nil }

// Close flushes accepted records and closes the file.
func (s *Embedded) Close() error {
	close(s.stop)
	s.done.Wait()
	return s.db.Close()
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
