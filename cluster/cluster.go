package cluster

import (
	"context"
	"errors"
	"time"
)

// ErrUnknownBackend is returned by Node.Tune and Node.Reset for a backend
// that is not configured.
var ErrUnknownBackend = errors.New("unknown backend")

// Tuning is what PATCH requests changed of a backend's config, for every
// process: each field set overrides the config's value; a nil field
// follows the config. Version counts the changes since the tuning was
// last dropped, UpdatedAt is the last one's time (the clock of the
// process that took the PATCH).
type Tuning struct {
	Rate        *float64  `json:"rate,omitempty"`
	Burst       *int      `json:"burst,omitempty"`
	Concurrency *int      `json:"concurrency,omitempty"`
	Adaptive    *bool     `json:"adaptive,omitempty"`
	Paused      *bool     `json:"paused,omitempty"`
	Version     int64     `json:"version"`
	UpdatedAt   time.Time `json:"updated_at"`
}

// Empty reports whether t sets no field: the config alone applies.
func (t Tuning) Empty() bool {
	return t.Rate == nil && t.Burst == nil && t.Concurrency == nil && t.Adaptive == nil && t.Paused == nil
}

// Over returns t with the fields u sets replaced by u's; version and time
// stay t's.
func (t Tuning) Over(u Tuning) Tuning {
	if u.Rate != nil {
		t.Rate = ptr(*u.Rate)
	}
	if u.Burst != nil {
		t.Burst = ptr(*u.Burst)
	}
	if u.Concurrency != nil {
		t.Concurrency = ptr(*u.Concurrency)
	}
	if u.Adaptive != nil {
		t.Adaptive = ptr(*u.Adaptive)
	}
	if u.Paused != nil {
		t.Paused = ptr(*u.Paused)
	}
	return t
}

// Equal reports whether t and u set the same fields to the same values
// and carry the same version and time.
func (t Tuning) Equal(u Tuning) bool {
	return same(t.Rate, u.Rate) && same(t.Burst, u.Burst) && same(t.Concurrency, u.Concurrency) &&
		same(t.Adaptive, u.Adaptive) && same(t.Paused, u.Paused) &&
		t.Version == u.Version && t.UpdatedAt.Equal(u.UpdatedAt)
}

func same[T comparable](a, b *T) bool {
	return a == nil && b == nil || a != nil && b != nil && *a == *b
}

func ptr[T any](v T) *T { return &v }

// Figures are one worker process's figures of one backend at SeenAt:
// who it is, the limits it applies, its counts since it started and its
// rates over the second before SeenAt.
type Figures struct {
	Worker string `json:"id"` // unique per process run: host, pid and a random part
	Host   string `json:"host"`
	PID    int    `json:"pid"`
	Admin  string `json:"admin,omitempty"` // its admin API's address

	Rate             float64 `json:"rate"` // the backend's rate as this process applies it, before its share
	Paused           bool    `json:"paused"`
	InFlight         int     `json:"in_flight"`
	ConcurrencyLimit int     `json:"concurrency_limit"`
	Share            float64 `json:"share"`

	Attempts     int64 `json:"attempts"`
	Succeeded    int64 `json:"succeeded"`
	Failed       int64 `json:"failed"`
	Retried      int64 `json:"retried"`
	DeadLettered int64 `json:"dead_lettered"`

	DeliveredPerSecond    float64 `json:"delivered_per_second"` // succeeded
	FailedPerSecond       float64 `json:"failed_per_second"`
	RetriedPerSecond      float64 `json:"retried_per_second"`
	AttemptsPerSecond     float64 `json:"attempts_per_second"`
	DeadLetteredPerSecond float64 `json:"dead_lettered_per_second"`
	// DrainPerSecond is the requests it took off the backend's queue:
	// succeeded, failed and retried (a retry leaves the queue for a delay).
	DrainPerSecond float64 `json:"drain_per_second"`

	SeenAt time.Time `json:"seen_at"`
}

// View is a backend's figures over every worker process that reported
// lately: each one's, and their sums.
type View struct {
	Workers               []Figures `json:"workers"` // by id
	InFlight              int       `json:"in_flight"`
	ConcurrencyLimit      int       `json:"concurrency_limit"`
	DeliveredPerSecond    float64   `json:"delivered_per_second"`
	FailedPerSecond       float64   `json:"failed_per_second"`
	RetriedPerSecond      float64   `json:"retried_per_second"`
	AttemptsPerSecond     float64   `json:"attempts_per_second"`
	DeadLetteredPerSecond float64   `json:"dead_lettered_per_second"`
	DrainPerSecond        float64   `json:"drain_per_second"`
}

// Store keeps the tunings and figures every process shares. All methods
// are safe for concurrent use and bounded by their ctx.
type Store interface {
	// Tunings reads the stored tuning of each of backends; one without a
	// tuning is absent from the map.
	Tunings(ctx context.Context, backends []string) (map[string]Tuning, error)
	// Tune merges the fields t sets into backend's stored tuning (Over),
	// adds one to its version and stamps UpdatedAt, as one atomic step:
	// concurrent Tunes from several processes lose no field. It announces
	// the change to every Listen and returns the tuning now stored.
	Tune(ctx context.Context, backend string, t Tuning) (Tuning, error)
	// Reset drops backend's tuning and announces it.
	Reset(ctx context.Context, backend string) error
	// Listen calls changed, from one goroutine, with the name of each
	// backend whose tuning changed, until ctx ends. Announcements can be
	// lost (a connection that drops): changed("") says that some may have
	// been, and everything should be read again; it is also called once the
	// listener is ready. Callers re-read now and then regardless.
	Listen(ctx context.Context, changed func(backend string))
	// Report stores one worker process's figures (by backend; each names
	// the worker), to be dropped ttl later unless reported again.
	Report(ctx context.Context, figures map[string]Figures, ttl time.Duration) error
	// Figures reads every worker's live figures of each of backends.
	Figures(ctx context.Context, backends []string) (map[string][]Figures, error)
	// Leave drops worker's figures of backends at once (a clean stop).
	Leave(ctx context.Context, worker string, backends []string) error
	// Close releases the store's connections, after every other call.
	Close() error
}
