package bolt

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/bbolt"

	"github.com/sluice-gw/sluice/job"
	"github.com/sluice-gw/sluice/results"
	"github.com/sluice-gw/sluice/results/internal/accept"
	"github.com/sluice-gw/sluice/results/internal/record"
	"github.com/sluice-gw/sluice/results/internal/watch"
)

var (
	// bucketRecords holds records, recordKey(id) -> record.Encode: in each
	// window file, and in results.db those written before windows existed
	// (as JSON), which live out their ttl there.
	bucketRecords = []byte("records")
	bucketIdem    = []byte("idempotency") // in results.db
)

// sweepChunk is the most keys one sweep transaction looks at: the sweep
// holds bbolt's single write lock only that long, so submits (Accept's
// flush, Claim) and collectors (Apply) wait at most one chunk behind it.
const sweepChunk = 1000

// Options configure the bbolt store. Zero values mean the documented
// defaults.
type Options struct {
	// Dir is the folder of the store's file, results.db; it is created if
	// missing. Required.
	Dir string
	// TTL is how long a record lives after its last update; an
	// idempotency key lives as long. Default results.DefaultTTL (24h).
	TTL time.Duration
	// RouteTTL overrides TTL for the records of the routes it names.
	RouteTTL map[string]time.Duration
	// Window is the span of expiry times one window file holds (see
	// window). Default the longest ttl / 8, at least a second and at most
	// an hour: the disk holds at most one window more than the ttl's worth
	// of records, and a store has at most about ttl/Window + 1 files open.
	Window time.Duration
	// MaxPending bounds the accepted records waiting in memory to be
	// written; past it Admit refuses. Default results.DefaultMaxPending.
	MaxPending int
	// FlushInterval is how often accepted records are written. Default
	// 50ms.
	FlushInterval time.Duration
	// SweepInterval is how often expired idempotency keys (and records
	// written before windows existed) are deleted. Default one minute.
	// Expired windows are dropped every Window/4.
	SweepInterval time.Duration
}

// withDefaults fills the zero options and reports invalid ones.
func (o Options) withDefaults() (Options, error) {
	if o.Dir == "" {
		return o, errors.New("open result store: no dir")
	}
	if o.TTL < 0 || o.MaxPending < 0 || o.FlushInterval < 0 || o.SweepInterval < 0 || o.Window < 0 {
		return o, fmt.Errorf("open result store: negative option in %+v", o)
	}
	if o.TTL == 0 {
		o.TTL = results.DefaultTTL
	}
	longest := o.TTL
	for r, d := range o.RouteTTL {
		if d <= 0 {
			return o, fmt.Errorf("open result store: ttl %v of route %q", d, r)
		}
		longest = max(longest, d)
	}
	if o.Window == 0 {
		o.Window = min(max(longest/8, time.Second), time.Hour)
	}
	o.Window = max(o.Window, time.Millisecond)
	if o.MaxPending == 0 {
		o.MaxPending = results.DefaultMaxPending
	}
	if o.FlushInterval == 0 {
		o.FlushInterval = 50 * time.Millisecond
	}
	if o.SweepInterval == 0 {
		o.SweepInterval = time.Minute
	}
	return o, nil
}

// Store is a results.Store in bbolt files on local disk, for one
// process. Records expire TTL (or their route's RouteTTL) after their last
// update; each is kept in the window file of its expiry, and a window is
// removed whole once its end has passed (see window). Idempotency keys,
// and records written before windows existed, are in results.db and are
// swept one by one. New requests (Accept) are kept in memory and written
// in batches every FlushInterval by Run; events (Apply) are committed
// before Apply returns.
//
// Open starts nothing. Before Run, Accept queues and Get finds the queued
// records, Apply, Claim and Release write to the file at once, but
// nothing accepted is written and nothing expires. Run flushes every
// FlushInterval and sweeps every SweepInterval until its ctx ends, then
// writes what is still queued and returns; Close closes the file after.
type Store struct {
	db   *bbolt.DB // results.db: idempotency keys, legacy records
	opts Options
	// wmu serialises the writers of records (flush, Apply, DropExpired):
	// a record may move between windows, which is two commits.
	wmu sync.Mutex
	// mu guards wins; readers hold it while they look in the windows, so
	// a window is never closed under them.
	mu        sync.RWMutex
	wins      []*window   // newest first
	legacy    atomic.Bool // results.db may still hold records
	hub       watch.Hub
	now       func() time.Time
	ran       atomic.Bool
	closeOnce sync.Once
	closeErr  error

	queue *accept.Queue // accepted, not yet on disk

	// Test hooks, nil outside tests.
	afterSweepTx func(examined, gone int) // Sweep: after each committed chunk
}

var _ results.Store = (*Store)(nil)

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

// Open opens (or creates) the store in opts.Dir. It starts nothing (see
// Store).
func Open(opts Options) (*Store, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("result store: %w", err)
	}
	db, err := openDB(filepath.Join(opts.Dir, "results.db"))
	if err != nil {
		return nil, fmt.Errorf("result store: %w", err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
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
	s := &Store{db: db, opts: opts, now: time.Now, queue: accept.New(opts.MaxPending)}
	_ = db.View(func(tx *bbolt.Tx) error {
		k, _ := tx.Bucket(bucketRecords).Cursor().First()
		s.legacy.Store(k != nil)
		return nil
	})
	if err := s.openWindows(); err != nil {
		_ = s.closeFiles()
		return nil, fmt.Errorf("result store: %w", err)
	}
	return s, nil
}

// Run writes accepted records every FlushInterval, drops expired windows
// every Window/4 and sweeps results.db every SweepInterval until ctx ends
// (a sweep under way stops between chunks), then writes the accepted records still in memory and returns.
// A failed final write returns an error wrapping results.ErrUnavailable.
func (s *Store) Run(ctx context.Context) error {
	if s.ran.Swap(true) {
		return errors.New("result store: Run called twice")
	}
	var wg sync.WaitGroup
	wg.Go(func() { every(ctx, s.opts.SweepInterval, func() { s.Sweep(ctx) }) })
	wg.Go(func() { every(ctx, max(s.opts.Window/4, time.Millisecond), func() { _, _ = s.DropExpired() }) })
	every(ctx, s.opts.FlushInterval, func() { _ = s.flush() })
	wg.Wait()
	if err := s.flush(); err != nil {
		return fmt.Errorf("result store: write %d accepted records: %w: %v", s.queue.Len(), results.ErrUnavailable, err)
	}
	return nil
}

// every calls f each interval until ctx ends.
func every(ctx context.Context, interval time.Duration, f func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}

// Admit implements results.Store: it refuses once MaxPending accepted
// records wait for the disk.
func (s *Store) Admit() error { return s.queue.Admit() }

// Accept keeps rec in memory until the next flush.
func (s *Store) Accept(_ context.Context, rec *job.Record) error {
	s.queue.Put(rec)
	return nil
}

// flush writes the queued accepted records that have no record on disk
// yet, accept.Chunk per transaction. It writes at most what was queued when
// it began, so a steady stream of submits cannot keep it from returning.
// Records whose write failed stay queued for the next flush.
func (s *Store) flush() error {
	for left := s.queue.Len(); left > 0; left -= accept.Chunk {
		batch := s.queue.Batch(accept.Chunk)
		if len(batch) == 0 {
			return nil
		}
		if err := s.flushBatch(batch); err != nil {
			return err
		}
		s.queue.Written(batch)
	}
	return nil
}

func (s *Store) flushBatch(batch []*job.Record) error {
	ids := make([]string, len(batch))
	for i, r := range batch {
		ids[i] = r.ID
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	where, err := s.lookupLocked(ids)
	if err != nil {
		return err
	}
	puts := make([]*job.Record, 0, len(batch))
	for _, r := range batch {
		if _, ok := where[r.ID]; !ok { // else an event got there first; it is newer
			puts = append(puts, r)
		}
	}
	return s.write(puts, nil, acceptedFill)
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

// The FillPercent of a window's records bucket. Keys mostly come in
// order (ids start with their acceptance time), so a page splits where
// this says, not in half. A record is written first when accepted and
// then rewritten larger (a completion time, the attempt log's entry: a
// page's records grow by about a quarter when each succeeds at its first
// attempt): pages of accepted records split at acceptedFill, leaving
// room for that growth, so the rewrites (at updateFill) fit in place and
// do not split each page into a full one and an almost empty one. At
// 0.85, room for the records before the attempt log, the log's bytes
// split every page and doubled the file (TestBytesPerRecord: 159 bytes a
// record instead of 106).
const (
	acceptedFill = 0.75
	updateFill   = 1.0
)

// ttlOf is how long a record of route lives after its last update.
func (s *Store) ttlOf(route string) time.Duration {
	if d, ok := s.opts.RouteTTL[route]; ok {
		return d
	}
	return s.opts.TTL
}

// expiry is when r stops being pollable.
func (s *Store) expiry(r *job.Record) time.Time { return r.UpdatedAt.Add(s.ttlOf(r.Route)) }

// found is a record on disk and the window holding it (nil: results.db).
type found struct {
	rec *job.Record
	win *window
}

// lookupLocked is lookup under s.mu.
func (s *Store) lookupLocked(ids []string) (map[string]found, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.lookup(ids)
}

// lookup finds the records of ids on disk: in the windows, newest first,
// then in results.db. The caller holds s.mu.
func (s *Store) lookup(ids []string) (map[string]found, error) {
	out := make(map[string]found, len(ids))
	look := func(db *bbolt.DB, w *window) error {
		return db.View(func(tx *bbolt.Tx) error {
			b := tx.Bucket(bucketRecords)
			for _, id := range ids {
				if _, ok := out[id]; ok {
					continue
				}
				if v := b.Get(recordKey(id)); v != nil {
					r, err := record.Decode(id, v)
					if err != nil {
						return err
					}
					out[id] = found{r, w}
				}
			}
			return nil
		})
	}
	for _, w := range s.wins {
		if len(out) == len(ids) {
			return out, nil
		}
		if err := look(w.db, w); err != nil {
			return nil, err
		}
	}
	if len(out) < len(ids) && s.legacy.Load() {
		if err := look(s.db, nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// write puts each record of puts in the window of its expiry — or in the
// window it is in already (where) when that one ends later: a record
// never moves to an earlier window, so the first window holding it,
// newest first, has its latest version. Then it deletes the copies left
// in other files. A record whose expiry has passed is not written (and
// its old copy goes). The moves are two commits: a crash between them
// leaves an older copy in an earlier file, which reads never reach. The
// caller holds s.wmu.
func (s *Store) write(puts []*job.Record, where map[string]found, fill float64) error {
	now := s.now()
	byEnd := map[int64][]*job.Record{}
	stale := map[*window][]string{} // copies to delete once the puts are in; nil: results.db
	for _, r := range puts {
		f, had := where[r.ID]
		exp := s.expiry(r)
		if !exp.After(now) {
			if had {
				stale[f.win] = append(stale[f.win], r.ID)
			}
			continue
		}
		end := s.endFor(exp)
		if had && f.win != nil && f.win.end.After(end) {
			end = f.win.end
		}
		if had && (f.win == nil || !f.win.end.Equal(end)) {
			stale[f.win] = append(stale[f.win], r.ID)
		}
		byEnd[end.UnixMilli()] = append(byEnd[end.UnixMilli()], r)
	}
	for _, end := range slices.Sorted(maps.Keys(byEnd)) {
		w, err := s.windowAt(time.UnixMilli(end))
		if err != nil {
			return err
		}
		err = w.db.Update(func(tx *bbolt.Tx) error {
			b := tx.Bucket(bucketRecords)
			b.FillPercent = fill
			for _, r := range byEnd[end] {
				v, err := record.Encode(r)
				if err != nil {
					return err
				}
				if err := b.Put(recordKey(r.ID), v); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	for w, ids := range stale {
		db := s.db
		if w != nil {
			db = w.db
		}
		err := db.Update(func(tx *bbolt.Tx) error {
			b := tx.Bucket(bucketRecords)
			for _, id := range ids {
				if err := b.Delete(recordKey(id)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// read returns id's record on disk, or nil.
func (s *Store) read(id string) (*job.Record, error) {
	where, err := s.lookupLocked([]string{id})
	return where[id].rec, err
}

// Get reads id's record from disk, or from the accepted records in memory.
// A record leaves memory only after it is on disk, but it may do so
// between the two looks: so a miss in memory is followed by a second look
// on disk, else a poll right after the 202 could answer 404.
func (s *Store) Get(_ context.Context, id string) (*job.Record, error) {
	rec, err := s.queue.Lookup(id, func() (*job.Record, error) { return s.read(id) })
	if err != nil {
		return nil, fmt.Errorf("%w: %v", results.ErrUnavailable, err)
	}
	if rec == nil || s.now().After(s.expiry(rec)) {
		return nil, results.ErrNotFound
	}
	return rec, nil
}

// Apply merges events, then wakes the watchers of every record that
// changed. Writers of records take turns (s.wmu), so the read, merge and
// write of a record cannot interleave with another Apply; the records of
// a batch that stay in one window are written in one transaction.
func (s *Store) Apply(_ context.Context, events []*job.Event) error {
	// Grouped by id, so a record with several events in the batch (in_flight
	// then succeeded, typically) is read and written once.
	order, byID := record.GroupByID(events)
	changed := make([]string, 0, len(order))
	err := func() error {
		s.wmu.Lock()
		defer s.wmu.Unlock()
		where, err := s.lookupLocked(order)
		if err != nil {
			return err
		}
		puts := make([]*job.Record, 0, len(order))
		for _, id := range order {
			f, onDisk := where[id]
			old := f.rec
			if !onDisk {
				old = s.queue.Get(id)
			}
			var cur job.Record
			if old != nil {
				cur = *old
			}
			applied := false
			for _, e := range byID[id] {
				applied = cur.Apply(e) || applied
			}
			switch {
			case applied:
				puts = append(puts, &cur)
				changed = append(changed, id)
			case old != nil && !onDisk: // an older event: still write the accepted record
				puts = append(puts, old)
			}
		}
		return s.write(puts, where, updateFill)
	}()
	if err != nil {
		return fmt.Errorf("%w: %v", results.ErrUnavailable, err)
	}
	s.queue.Forget(order)
	for _, id := range changed {
		s.hub.Notify(id)
	}
	return nil
}

// Watch implements results.Store.
func (s *Store) Watch(id string) (<-chan struct{}, func()) { return s.hub.Watch(id) }

func claimKey(client, key string) []byte { return []byte(client + "\x00" + key) }

// Claim implements results.Store in one write transaction: bbolt's single writer
// makes the read and the binding one step.
func (s *Store) Claim(_ context.Context, client, key, id string, lease time.Duration) (results.Claim, error) {
	k := claimKey(client, key)
	var out results.Claim
	// Batch may run the function again on its own after a failed batch, so
	// it sets out from scratch each time.
	err := s.db.Batch(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketIdem)
		now := s.now()
		own := func(boundID string) error {
			out = results.Claim{ID: boundID, State: results.ClaimOwned}
			v, _ := json.Marshal(storedClaim{ID: boundID, State: claimOwned,
				Lease: now.Add(lease), Expiry: now.Add(s.opts.TTL)})
			return b.Put(k, v)
		}
		var c storedClaim
		if v := b.Get(k); v == nil || json.Unmarshal(v, &c) != nil || !now.Before(c.Expiry) {
			return own(id) // free, unreadable, or past the ttl
		}
		switch {
		case c.State == claimQueued || c.State == "":
			out = results.Claim{ID: c.ID, State: results.ClaimQueued}
			return nil
		case c.State == claimOwned && now.Before(c.Lease):
			out = results.Claim{ID: c.ID, State: results.ClaimPending}
			return nil
		}
		// Released, or its owner's lease ran out: that id may have been
		// written; the caller publishes the same one again.
		return own(c.ID)
	})
	if err != nil {
		return results.Claim{}, fmt.Errorf("%w: %v", results.ErrUnavailable, err)
	}
	return out, nil
}

// Release implements results.Store. It changes nothing unless id owns the key.
func (s *Store) Release(_ context.Context, client, key, id string, queued bool) error {
	k := claimKey(client, key)
	err := s.db.Batch(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketIdem)
		now := s.now()
		var c storedClaim
		v := b.Get(k)
		if v == nil || json.Unmarshal(v, &c) != nil || !now.Before(c.Expiry) ||
			c.State != claimOwned || c.ID != id {
			return nil
		}
		if queued {
			c = storedClaim{ID: id, State: claimQueued, Expiry: now.Add(s.opts.TTL)}
		} else {
			c = storedClaim{ID: id, State: claimReleased, Expiry: c.Expiry}
		}
		v, _ = json.Marshal(c)
		return b.Put(k, v)
	})
	if err != nil {
		return fmt.Errorf("%w: %v", results.ErrUnavailable, err)
	}
	return nil
}

// Sweep deletes expired idempotency keys, and the expired records
// results.db holds from before windows existed, sweepChunk keys per write
// transaction, so nothing waits long behind it. Record keys start with
// the acceptance time and a record expires ttl after its last update,
// never sooner than the shortest ttl after acceptance; so only keys
// accepted before now minus that need a look, oldest first. The end of
// ctx interrupts it between chunks.
func (s *Store) Sweep(ctx context.Context) {
	now := s.now()
	shortest := s.opts.TTL
	for _, d := range s.opts.RouteTTL {
		shortest = min(shortest, d)
	}
	cutoff := now.Add(-shortest)
	if s.legacy.Load() {
		s.sweepBucket(ctx, bucketRecords, func(k, v []byte) (dead, stop bool) {
			if at, ok := job.IssuedAtRaw(k); ok && at.After(cutoff) {
				return false, true
			}
			r, err := record.Decode("", v)
			return err != nil || now.After(s.expiry(r)), false
		})
		_ = s.db.View(func(tx *bbolt.Tx) error {
			k, _ := tx.Bucket(bucketRecords).Cursor().First()
			s.legacy.Store(k != nil)
			return nil
		})
	}
	s.sweepBucket(ctx, bucketIdem, func(_, v []byte) (dead, stop bool) {
		var c storedClaim
		return json.Unmarshal(v, &c) != nil || !now.Before(c.Expiry), false
	})
}

// sweepBucket walks bucket in key order, one short transaction per
// sweepChunk keys, deleting those judge calls dead, until judge says stop.
func (s *Store) sweepBucket(ctx context.Context, bucket []byte, judge func(k, v []byte) (dead, stop bool)) {
	var from []byte // where the next chunk starts; nil: the first key
	for {
		if ctx.Err() != nil {
			return
		}
		examined, gone, finished := 0, 0, false
		err := s.db.Update(func(tx *bbolt.Tx) error {
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

// Ping implements results.Store.
func (s *Store) Ping(context.Context) error { return nil }

// Close closes the file. Call it after Run returned (or when Run was
// never called): it writes nothing of what is still in memory. Later
// calls return the first call's result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.closeFiles() })
	return s.closeErr
}

// closeFiles closes results.db and every window.
func (s *Store) closeFiles() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	errs := []error{s.db.Close()}
	for _, w := range s.wins {
		errs = append(errs, w.db.Close())
	}
	return errors.Join(errs...)
}
