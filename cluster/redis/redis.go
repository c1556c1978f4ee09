// Package redis is the cluster.Store every sluice process shares through
// Redis (results.store: redis): tunings in a hash per backend, their
// changes announced on a pub/sub channel, and each worker's figures in a
// key that expires unless reported again.
//
// Keys, under the result store's key prefix P:
//
//	P tune:<backend>              hash: the fields a PATCH set (rate, burst,
//	                              concurrency, adaptive, paused), version,
//	                              updated_at; no expiry (kept until DELETE)
//	P tune                        the channel: a backend's name on each change
//	P workers:<backend>           set of the worker ids that reported lately
//	P worker:<backend>:<id>       one worker's figures (JSON), expiring
package redis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/sluice-gw/sluice/cluster"
	"github.com/sluice-gw/sluice/internal/redissub"
)

// Options say which Redis and keys; zero values mean the result store's
// defaults (127.0.0.1:6379, prefix "sluice:").
type Options struct {
	Addr      string
	Password  string
	DB        int
	KeyPrefix string
}

// Store is a cluster.Store in Redis. Open connects lazily; Close
// disconnects.
type Store struct {
	rdb    *goredis.Client
	prefix string
	now    func() time.Time
}

var _ cluster.Store = (*Store)(nil)

// Open returns the store for opts; it starts and dials nothing.
func Open(opts Options) *Store {
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:6379"
	}
	if opts.KeyPrefix == "" {
		opts.KeyPrefix = "sluice:"
	}
	// Calls are bounded by their context (ContextTimeoutEnabled) and
	// retried by the Node's next round, not by the client.
	rdb := goredis.NewClient(&goredis.Options{Addr: opts.Addr, Password: opts.Password, DB: opts.DB,
		ContextTimeoutEnabled: true, MaxRetries: -1})
	return &Store{rdb: rdb, prefix: opts.KeyPrefix, now: time.Now}
}

func (s *Store) tuneKey(b string) string    { return s.prefix + "tune:" + b }
func (s *Store) channel() string            { return s.prefix + "tune" }
func (s *Store) membersKey(b string) string { return s.prefix + "workers:" + b }
func (s *Store) figKey(b, id string) string { return s.prefix + "worker:" + b + ":" + id }

// Tunings implements cluster.Store: one round trip for all backends.
func (s *Store) Tunings(ctx context.Context, backends []string) (map[string]cluster.Tuning, error) {
	cmds := make([]*goredis.MapStringStringCmd, len(backends))
	_, err := s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for i, b := range backends {
			cmds[i] = p.HGetAll(ctx, s.tuneKey(b))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read tunings: %w", err)
	}
	out := map[string]cluster.Tuning{}
	for i, b := range backends {
		h := cmds[i].Val()
		if len(h) == 0 {
			continue
		}
		t, err := decode(h)
		if err != nil {
			return nil, fmt.Errorf("tuning of %s: %w", b, err)
		}
		out[b] = t
	}
	return out, nil
}

// Tune implements cluster.Store: the fields, the version and the time are
// written, read back and announced in one MULTI, so two processes tuning
// at once each keep their fields and get their own version.
func (s *Store) Tune(ctx context.Context, backend string, t cluster.Tuning) (cluster.Tuning, error) {
	fields := encode(t)
	fields = append(fields, "updated_at", s.now().UTC().Format(time.RFC3339Nano))
	var all *goredis.MapStringStringCmd
	_, err := s.rdb.TxPipelined(ctx, func(p goredis.Pipeliner) error {
		key := s.tuneKey(backend)
		p.HSet(ctx, key, fields...)
		p.HIncrBy(ctx, key, "version", 1)
		all = p.HGetAll(ctx, key)
		p.Publish(ctx, s.channel(), backend)
		return nil
	})
	if err != nil {
		return cluster.Tuning{}, fmt.Errorf("store tuning: %w", err)
	}
	return decode(all.Val())
}

// Reset implements cluster.Store.
func (s *Store) Reset(ctx context.Context, backend string) error {
	_, err := s.rdb.TxPipelined(ctx, func(p goredis.Pipeliner) error {
		p.Del(ctx, s.tuneKey(backend))
		p.Publish(ctx, s.channel(), backend)
		return nil
	})
	if err != nil {
		return fmt.Errorf("drop tuning: %w", err)
	}
	return nil
}

// encode is t's set fields as hash field-value pairs.
func encode(t cluster.Tuning) []any {
	var out []any
	if t.Rate != nil {
		out = append(out, "rate", strconv.FormatFloat(*t.Rate, 'g', -1, 64))
	}
	if t.Burst != nil {
		out = append(out, "burst", strconv.Itoa(*t.Burst))
	}
	if t.Concurrency != nil {
		out = append(out, "concurrency", strconv.Itoa(*t.Concurrency))
	}
	if t.Adaptive != nil {
		out = append(out, "adaptive", strconv.FormatBool(*t.Adaptive))
	}
	if t.Paused != nil {
		out = append(out, "paused", strconv.FormatBool(*t.Paused))
	}
	return out
}

// decode reads a tuning hash. Unknown fields are skipped: a later version
// may add some.
func decode(h map[string]string) (cluster.Tuning, error) {
	var t cluster.Tuning
	var errs []error
	for k, v := range h {
		var err error
		switch k {
		case "rate":
			t.Rate, err = parsed(strconv.ParseFloat(v, 64))
		case "burst":
			t.Burst, err = parsed(strconv.Atoi(v))
		case "concurrency":
			t.Concurrency, err = parsed(strconv.Atoi(v))
		case "adaptive":
			t.Adaptive, err = parsed(strconv.ParseBool(v))
		case "paused":
			t.Paused, err = parsed(strconv.ParseBool(v))
		case "version":
			t.Version, err = strconv.ParseInt(v, 10, 64)
		case "updated_at":
			t.UpdatedAt, err = time.Parse(time.RFC3339Nano, v)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %q: %w", k, v, err))
		}
	}
	return t, errors.Join(errs...)
}

// parsed turns what a strconv parser returns into a tuning field.
func parsed[T any](v T, err error) (*T, error) { return &v, err }

// Listen implements cluster.Store. go-redis subscribes again by itself
// after a connection drops; each (re)subscription calls changed(""), since
// announcements made meanwhile were lost. It pings when idle, so a dead
// connection is noticed, and backs off while Redis is away.
func (s *Store) Listen(ctx context.Context, changed func(string)) {
	redissub.Listen(ctx, s.rdb, s.channel(), 500*time.Millisecond, func() { changed("") }, changed)
}

// Report implements cluster.Store: each backend's figures in a key of
// their own that expires after ttl, and the worker's id in the backend's
// set, which expires a while after the last report of any worker.
func (s *Store) Report(ctx context.Context, figures map[string]cluster.Figures, ttl time.Duration) error {
	if len(figures) == 0 {
		return nil
	}
	_, err := s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for b, f := range figures {
			v, err := json.Marshal(f)
			if err != nil {
				return err
			}
			p.Set(ctx, s.figKey(b, f.Worker), v, ttl)
			p.SAdd(ctx, s.membersKey(b), f.Worker)
			p.PExpire(ctx, s.membersKey(b), 3*ttl)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("report figures: %w", err)
	}
	return nil
}

// Figures implements cluster.Store in two round trips (the members, then
// their figures); members whose figures expired are removed from the set.
func (s *Store) Figures(ctx context.Context, backends []string) (map[string][]cluster.Figures, error) {
	members := make([]*goredis.StringSliceCmd, len(backends))
	_, err := s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for i, b := range backends {
			members[i] = p.SMembers(ctx, s.membersKey(b))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read workers: %w", err)
	}
	values := make([]*goredis.SliceCmd, len(backends))
	_, err = s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for i, b := range backends {
			ids := members[i].Val()
			if len(ids) == 0 {
				continue
			}
			keys := make([]string, len(ids))
			for j, id := range ids {
				keys[j] = s.figKey(b, id)
			}
			values[i] = p.MGet(ctx, keys...)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read figures: %w", err)
	}
	out := map[string][]cluster.Figures{}
	gone := map[string][]any{}
	for i, b := range backends {
		if values[i] == nil {
			continue
		}
		for j, v := range values[i].Val() {
			str, ok := v.(string)
			var f cluster.Figures
			if !ok || json.Unmarshal([]byte(str), &f) != nil {
				gone[b] = append(gone[b], members[i].Val()[j])
				continue
			}
			out[b] = append(out[b], f)
		}
	}
	if len(gone) > 0 { // best effort: another read removes them otherwise
		_, _ = s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
			for b, ids := range gone {
				p.SRem(ctx, s.membersKey(b), ids...)
			}
			return nil
		})
	}
	return out, nil
}

// Leave implements cluster.Store.
func (s *Store) Leave(ctx context.Context, worker string, backends []string) error {
	_, err := s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for _, b := range backends {
			p.Del(ctx, s.figKey(b, worker))
			p.SRem(ctx, s.membersKey(b), worker)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("withdraw figures: %w", err)
	}
	return nil
}

// Close implements cluster.Store.
func (s *Store) Close() error { return s.rdb.Close() }
