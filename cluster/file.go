package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// File is the Store of a single process: tunings in a small JSON file
// (written whole, through a temporary file and a rename, so a crash leaves
// the old or the new one), figures in memory. Announcements reach the
// Listens of the same File. It is safe for concurrent use.
type File struct {
	path string
	now  func() time.Time

	mu        sync.Mutex
	tunings   map[string]Tuning
	figures   map[string]map[string]kept // backend -> worker -> figures
	listeners map[*listener]struct{}
}

type kept struct {
	f     Figures
	until time.Time
}

// listener is one Listen's queue of backends to announce.
type listener struct {
	pending map[string]struct{}
	wake    chan struct{} // capacity 1
}

var _ Store = (*File)(nil)

// OpenFile reads the tunings kept in path, a file that need not exist yet.
// A file that cannot be read or parsed is an error: starting without the
// tunings would undo a pause or a lowered rate unnoticed.
func OpenFile(path string) (*File, error) {
	f := &File{path: path, now: time.Now, tunings: map[string]Tuning{},
		figures: map[string]map[string]kept{}, listeners: map[*listener]struct{}{}}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return f, nil
	case err != nil:
		return nil, fmt.Errorf("tuning file: %w", err)
	}
	if err := json.Unmarshal(b, &f.tunings); err != nil {
		return nil, fmt.Errorf("tuning file %s: %w (fix or remove it: the backends then follow the config)", path, err)
	}
	return f, nil
}

// Tunings implements Store.
func (f *File) Tunings(_ context.Context, backends []string) (map[string]Tuning, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]Tuning{}
	for _, b := range backends {
		if t, ok := f.tunings[b]; ok {
			out[b] = t
		}
	}
	return out, nil
}

// Tune implements Store.
func (f *File) Tune(_ context.Context, backend string, t Tuning) (Tuning, error) {
	f.mu.Lock()
	old, had := f.tunings[backend]
	next := old.Over(t)
	next.Version, next.UpdatedAt = old.Version+1, f.now().UTC()
	f.tunings[backend] = next
	if err := f.write(); err != nil {
		if had {
			f.tunings[backend] = old
		} else {
			delete(f.tunings, backend)
		}
		f.mu.Unlock()
		return Tuning{}, err
	}
	f.announce(backend)
	f.mu.Unlock()
	return next, nil
}

// Reset implements Store.
func (f *File) Reset(_ context.Context, backend string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	old, had := f.tunings[backend]
	if !had {
		f.announce(backend) // as Redis does: a reset is announced, tuning or not
		return nil
	}
	delete(f.tunings, backend)
	if err := f.write(); err != nil {
		f.tunings[backend] = old
		return err
	}
	f.announce(backend)
	return nil
}

// write replaces the file with f.tunings; f.mu is held.
func (f *File) write() error {
	b, err := json.MarshalIndent(f.tunings, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(f.path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("tuning file: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".tuning-*")
	if err != nil {
		return fmt.Errorf("tuning file: %w", err)
	}
	defer os.Remove(tmp.Name()) // fails once renamed
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("tuning file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("tuning file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("tuning file: %w", err)
	}
	if err := os.Rename(tmp.Name(), f.path); err != nil {
		return fmt.Errorf("tuning file: %w", err)
	}
	return nil
}

// announce queues backend for every Listen; f.mu is held. Listen calls
// back from its own goroutine, never from the Tune's.
func (f *File) announce(backend string) {
	for l := range f.listeners {
		l.pending[backend] = struct{}{}
		select {
		case l.wake <- struct{}{}:
		default:
		}
	}
}

// Listen implements Store.
func (f *File) Listen(ctx context.Context, changed func(string)) {
	l := &listener{pending: map[string]struct{}{}, wake: make(chan struct{}, 1)}
	f.mu.Lock()
	f.listeners[l] = struct{}{}
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.listeners, l)
		f.mu.Unlock()
	}()
	changed("")
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.wake:
		}
		f.mu.Lock()
		names := make([]string, 0, len(l.pending))
		for b := range l.pending {
			names = append(names, b)
		}
		clear(l.pending)
		f.mu.Unlock()
		for _, b := range names {
			changed(b)
		}
	}
}

// Report implements Store.
func (f *File) Report(_ context.Context, figures map[string]Figures, ttl time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	until := f.now().Add(ttl)
	for b, fig := range figures {
		if f.figures[b] == nil {
			f.figures[b] = map[string]kept{}
		}
		f.figures[b][fig.Worker] = kept{fig, until}
	}
	return nil
}

// Figures implements Store.
func (f *File) Figures(_ context.Context, backends []string) (map[string][]Figures, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now()
	out := map[string][]Figures{}
	for _, b := range backends {
		for w, k := range f.figures[b] {
			if now.After(k.until) {
				delete(f.figures[b], w)
				continue
			}
			out[b] = append(out[b], k.f)
		}
	}
	return out, nil
}

// Leave implements Store.
func (f *File) Leave(_ context.Context, worker string, backends []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, b := range backends {
		delete(f.figures[b], worker)
	}
	return nil
}

// Close implements Store; a File holds nothing open.
func (f *File) Close() error { return nil }
