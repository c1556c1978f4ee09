package broker

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Monitor keeps a recent view of topics' backlogs and drain rates by polling
// Stats, so that hot paths (ingress answering Retry-After, admission against
// max_backlog) never ask the broker themselves.
type Monitor struct {
	b interface {
		Stats(context.Context, string) (QueueStats, error)
	}
	interval time.Duration
	mu       sync.RWMutex
	topics   map[string]*topicView
}

type topicView struct {
	added     atomic.Int64 // published through Add since the last poll
	depth     int64
	consumed  int64
	drain     float64 // messages per second, smoothed
	polledAt  time.Time
	available bool
}

// NewMonitor watches topics of b, polling every interval.
func NewMonitor(b interface {
	Stats(context.Context, string) (QueueStats, error)
}, topics []string, interval time.Duration) *Monitor {
	m := &Monitor{b: b, interval: interval, topics: map[string]*topicView{}}
	for _, t := range topics {
		m.topics[t] = &topicView{}
	}
	return m
}

// Run polls until ctx ends.
func (m *Monitor) Run(ctx context.Context) error {
	t := time.NewTicker(m.interval)
	defer t.Stop()
	for {
		m.Poll(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Poll refreshes every topic once.
func (m *Monitor) Poll(ctx context.Context) {
	for topic, v := range m.topics {
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := m.b.Stats(qctx, topic)
		cancel()
		now := time.Now()
		m.mu.Lock()
		if err != nil {
			v.available = false
		} else {
			if v.available && !v.polledAt.IsZero() {
				dt := now.Sub(v.polledAt).Seconds()
				rate := math.Max(0, float64(st.Consumed-v.consumed)) / dt
				if v.drain == 0 {
					v.drain = rate
				} else {
					v.drain = 0.6*v.drain + 0.4*rate
				}
			}
			v.depth, v.consumed, v.polledAt, v.available = st.Depth, st.Consumed, now, true
			v.added.Store(0)
		}
		m.mu.Unlock()
	}
}

// Add counts n messages published to topic since the last poll, so Depth
// stays current between polls.
func (m *Monitor) Add(topic string, n int64) {
	if v := m.topics[topic]; v != nil {
		v.added.Add(n)
	}
}

// Backlog returns topic's depth (last poll plus what was added since) and
// its smoothed drain rate in messages per second (0 when unknown).
func (m *Monitor) Backlog(topic string) (depth int64, drain float64) {
	v := m.topics[topic]
	if v == nil {
		return 0, 0
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	return v.depth + v.added.Load(), v.drain
}
