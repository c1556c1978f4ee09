package results

import (
	"context"
	"errors"

	"github.com/sluice-gw/sluice/job"
)

// ErrNotFound reports an unknown or expired id.
var ErrNotFound = job.ErrNotFound

// ErrUnavailable reports a store that cannot answer right now.
var ErrUnavailable = errors.New("result store unavailable")

// Store holds records by id. All methods are safe for concurrent use.
type Store interface {
	// Accept records a request that was just queued. Get sees it at once.
	Accept(ctx context.Context, rec *job.Record) error
	// Get returns the record of id, or ErrNotFound.
	Get(ctx context.Context, id string) (*job.Record, error)
	// Apply merges events into their records (job.Record.Apply) and
	// returns once the result is durable.
	Apply(ctx context.Context, events []*job.Event) error
	// Watch returns a channel closed at the next change of id's record, and
	// a function to stop watching.
	Watch(id string) (<-chan struct{}, func())
	// Claim binds an idempotency key of a client to id unless it is bound
	// already; it returns the id the key is bound to and whether it was new.
	Claim(ctx context.Context, client, key, id string) (string, bool, error)
	// Unclaim drops a binding made by Claim whose request was not accepted.
	Unclaim(ctx context.Context, client, key string) error
	// Ping reports whether the store is reachable.
	Ping(ctx context.Context) error
	Close() error
}
