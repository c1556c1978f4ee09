package bolt

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/bbolt"
)

// A window is one bbolt file holding the records that expire before its
// end (and after the end of the window before it): records-<end>.db, end
// in Unix milliseconds. Once its end has passed every record in it has
// expired, and the whole file is closed and removed at once — no record
// is read or deleted one by one, and the disk space comes back to the
// file system (a bbolt file never shrinks, so one file for all records
// would keep its largest size for good).
type window struct {
	end time.Time
	db  *bbolt.DB
}

const windowPrefix, windowSuffix = "records-", ".db"

// windowFile is the name of the window that ends at end.
func windowFile(end time.Time) string {
	return windowPrefix + strconv.FormatInt(end.UnixMilli(), 10) + windowSuffix
}

// parseWindowFile returns the end of a window file's name.
func parseWindowFile(name string) (time.Time, bool) {
	s, ok := strings.CutPrefix(name, windowPrefix)
	if !ok {
		return time.Time{}, false
	}
	s, ok = strings.CutSuffix(s, windowSuffix)
	if !ok {
		return time.Time{}, false
	}
	ms, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.UnixMilli(ms), true
}

// endFor is the end of the window a record expiring at expiry goes in.
func (s *Store) endFor(expiry time.Time) time.Time {
	w := s.opts.Window.Milliseconds()
	return time.UnixMilli((expiry.UnixMilli()/w + 1) * w)
}

// openDB opens a bbolt file the way the store keeps its files: the
// freelist is not written (it is rebuilt at open; writing it costs a
// page per commit and, for a large file, many), and the file grows by at
// most allocStep past what it holds, not by doubling.
func openDB(path string) (*bbolt.DB, error) {
	db, err := bbolt.Open(path, 0o644, &bbolt.Options{Timeout: 5 * time.Second, NoFreelistSync: true,
		FreelistType: bbolt.FreelistMapType})
	if err != nil {
		return nil, err
	}
	db.AllocSize = allocStep
	return db, nil
}

// allocStep is how far past its data a store file grows at a time.
const allocStep = 1 << 20

// openWindows opens the window files in the store's dir, removing those
// whose end has passed.
func (s *Store) openWindows() error {
	ents, err := os.ReadDir(s.opts.Dir)
	if err != nil {
		return err
	}
	now := s.now()
	for _, e := range ents {
		end, ok := parseWindowFile(e.Name())
		if !ok {
			continue
		}
		path := filepath.Join(s.opts.Dir, e.Name())
		if !now.Before(end) {
			if err := os.Remove(path); err != nil {
				return err
			}
			continue
		}
		db, err := openDB(path)
		if err != nil {
			return fmt.Errorf("%s: %w", e.Name(), err)
		}
		s.wins = append(s.wins, &window{end: end, db: db})
	}
	sortWindows(s.wins)
	return nil
}

// sortWindows orders ws newest (latest end) first: the order reads look
// in, since a record's latest version is in the latest window holding it.
func sortWindows(ws []*window) {
	slices.SortFunc(ws, func(a, b *window) int { return b.end.Compare(a.end) })
}

// windowAt returns the open window ending at end, creating it if needed.
// The caller holds s.wmu; it takes s.mu itself to change the list.
func (s *Store) windowAt(end time.Time) (*window, error) {
	s.mu.RLock()
	for _, w := range s.wins {
		if w.end.Equal(end) {
			s.mu.RUnlock()
			return w, nil
		}
	}
	s.mu.RUnlock()
	db, err := openDB(filepath.Join(s.opts.Dir, windowFile(end)))
	if err != nil {
		return nil, err
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketRecords)
		return err
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	w := &window{end: end, db: db}
	s.mu.Lock()
	s.wins = append(s.wins, w)
	sortWindows(s.wins)
	s.mu.Unlock()
	return w, nil
}

// DropExpired closes and removes every window whose end has passed, and
// returns how many it removed. Its records have all expired: Get would
// not answer them any more.
func (s *Store) DropExpired() (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	now := s.now()
	s.mu.Lock()
	var gone []*window
	keep := s.wins[:0]
	for _, w := range s.wins {
		if now.Before(w.end) {
			keep = append(keep, w)
		} else {
			gone = append(gone, w)
		}
	}
	clear(s.wins[len(keep):])
	s.wins = keep
	s.mu.Unlock()
	// No reader holds a dropped window now: readers look under s.mu, and
	// it is no longer listed. Writers are kept out by s.wmu.
	var errs []error
	for _, w := range gone {
		path := w.db.Path()
		if err := w.db.Close(); err != nil {
			errs = append(errs, err)
		}
		if err := os.Remove(path); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return len(gone), fmt.Errorf("result store: drop expired windows: %v", errs)
	}
	return len(gone), nil
}
