package results

import (
	"context"
	"errors"
	"time"

	"github.com/sluice-gw/sluice/job"
)

// ErrNotFound reports an unknown or expired id.
var ErrNotFound = job.ErrNotFound

// ErrUnavailable reports a store that cannot answer right now.
var ErrUnavailable = errors.New("result store unavailable")

// The defaults both stores take for a zero option.
const (
	// DefaultTTL is how long a record lives after its last update.
	DefaultTTL = 24 * time.Hour
	// DefaultMaxPending is how many accepted records may wait in memory to
	// be written before Admit refuses more.
	DefaultMaxPending = 100000
)

// Claim and its states are job's (ingress reads them without importing
// results).
type (
	Claim      = job.Claim
	ClaimState = job.ClaimState
)

// The claim states of job.
const (
	ClaimOwned   = job.ClaimOwned
	ClaimQueued  = job.ClaimQueued
	ClaimPending = job.ClaimPending
)

// Store holds records by id. All methods are safe for concurrent use, also
// from several processes sharing one store.
//
// Its life: an adapter's constructor opens it and starts nothing; Run
// starts the background work (writing accepted records, expiry, change
// announcements) and owns it until its ctx ends; Close releases the
// store once Run has returned. Before Run every method answers, but
// accepted records only wait in memory (Get finds them there) and Watch
// may miss changes other processes make.
type Store interface {
	// Run does the store's background work until ctx ends, then writes the
	// accepted records still in memory (bounded in time by the adapter)
	// and returns. It returns an error wrapping ErrUnavailable when some
	// could not be written. It is called once.
	Run(ctx context.Context) error
	// Admit reports whether Accept can take one more record now; it
	// returns an error wrapping ErrUnavailable when too many accepted
	// records wait to be written (the store is slow or away). Ingress asks
	// before it publishes, so it never answers 503 for a request it queued.
	Admit() error
	// Accept records a request that was just queued. Get sees it at once;
	// it never fails (records wait in memory until written).
	Accept(ctx context.Context, rec *job.Record) error
	// Get returns the record of id, or ErrNotFound.
	Get(ctx context.Context, id string) (*job.Record, error)
	// Apply merges events into their records (job.Record.Apply) atomically:
	// concurrent Applies, from any number of processes, lose no update. It
	// returns once the result is durable.
	Apply(ctx context.Context, events []*job.Event) error
	// Watch returns a channel closed at the next change of id's record, and
	// a function to stop watching.
	Watch(id string) (<-chan struct{}, func())
	// Claim binds an idempotency key of a client to id, unless the key is
	// bound already, and tells the caller what to do (ClaimState). A claim
	// the caller owns is held for lease; a holder that dies is replaced
	// after that.
	Claim(ctx context.Context, client, key, id string, lease time.Duration) (Claim, error)
	// Release ends an owned claim of id. queued true binds the key to id for
	// the store's ttl; false (the publish failed, or timed out and may have
	// landed) hands the key with the same id to the next claimant, so a
	// retry publishes that id again instead of a duplicate under a new id.
	Release(ctx context.Context, client, key, id string, queued bool) error
	// Ping reports whether the store is reachable.
	Ping(ctx context.Context) error
	// Close releases the store (file, connections). Call it after Run
	// returned, or when Run was never called; it writes nothing. Later
	// calls return the first call's result.
	Close() error
}
