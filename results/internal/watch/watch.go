package watch

import "sync"

// Hub wakes pollers waiting on an id. The zero Hub is ready to use; it is
// safe for concurrent use.
type Hub struct {
	mu sync.Mutex
	w  map[string][]chan struct{}
}

// Watch returns a channel closed at the next Notify of id (or NotifyAll),
// and a function to stop watching.
func (h *Hub) Watch(id string) (<-chan struct{}, func()) {
	ch := make(chan struct{})
	h.mu.Lock()
	if h.w == nil {
		h.w = map[string][]chan struct{}{}
	}
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

// Notify wakes the watchers of id.
func (h *Hub) Notify(id string) {
	h.mu.Lock()
	list := h.w[id]
	delete(h.w, id)
	h.mu.Unlock()
	for _, c := range list {
		close(c)
	}
}

// NotifyAll wakes every watcher: after announcements may have been missed
// (a lost subscription), each poller reads its record again.
func (h *Hub) NotifyAll() {
	h.mu.Lock()
	w := h.w
	h.w = nil
	h.mu.Unlock()
	for _, list := range w {
		for _, c := range list {
			close(c)
		}
	}
}
