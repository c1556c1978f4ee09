package results

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-gw/sluice/job"
)

// RedisOptions configure the Redis store.
type RedisOptions struct {
	Addr      string
	Password  string
	DB        int
	KeyPrefix string // default "sluice:"
	TTL       time.Duration
}

// Redis is a Store shared by every sluice process: any ingress answers any
// poll. Records expire ttl after their last update (Redis TTL). New
// requests (Accept) are written in pipelined batches every few milliseconds,
// so a Redis outage never slows or fails a submit; polls answer
// ErrUnavailable while Redis is away. Collectors announce changed ids on a
// pub/sub channel, which wakes long polls in every process.
type Redis struct {
	rdb   *redis.Client
	opts  RedisOptions
	hub   hub
	stop  chan struct{}
	done  sync.WaitGroup
	queue acceptQueue
}

var _ Store = (*Redis)(nil)

// OpenRedis connects (lazily: a Redis that is down now is retried later).
func OpenRedis(opts RedisOptions) *Redis {
	if opts.KeyPrefix == "" {
		opts.KeyPrefix = "sluice:"
	}
	s := &Redis{
		rdb: redis.NewClient(&redis.Options{Addr: opts.Addr, Password: opts.Password, DB: opts.DB,
			DialTimeout: 2 * time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second,
			MaxRetries: 1}),
		opts: opts, hub: hub{w: map[string][]chan struct{}{}}, stop: make(chan struct{}),
		queue: newAcceptQueue(),
	}
	s.done.Add(2)
	go func() { defer s.done.Done(); every(5*time.Millisecond, s.stop, s.flush) }()
	go s.listen()
	return s
}

func (s *Redis) recKey(id string) string { return s.opts.KeyPrefix + "r:" + id }
func (s *Redis) idemKey(client, key string) string {
	return s.opts.KeyPrefix + "i:" + client + "\x00" + key
}
func (s *Redis) channel() string { return s.opts.KeyPrefix + "changed" }

func unavailable(err error) error { return fmt.Errorf("%w: %v", ErrUnavailable, err) }

// Accept queues rec for the next pipelined write.
func (s *Redis) Accept(_ context.Context, rec *job.Record) error {
	s.queue.put(rec)
	return nil
}

// flush writes accepted records, never over a record an event already made.
// While Redis is away they stay queued and are tried again.
func (s *Redis) flush() {
	batch := s.queue.batch()
	if len(batch) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, r := range batch {
			v, _ := json.Marshal(storedRecord{Record: r, Client: r.Client, Gen: r.Gen})
			p.SetNX(ctx, s.recKey(r.ID), v, s.opts.TTL)
		}
		return nil
	})
	if err == nil {
		s.queue.written(batch)
	}
}

// Get reads id's record.
func (s *Redis) Get(ctx context.Context, id string) (*job.Record, error) {
	v, err := s.rdb.Get(ctx, s.recKey(id)).Bytes()
	if errors.Is(err, redis.Nil) {
		if r := s.queue.get(id); r != nil {
			return r, nil
		}
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, unavailable(err)
	}
	return decodeRecord(v)
}

// Apply merges events into their records: one read of all of them, then a
// pipelined write, then one announcement of the ids that changed. Events
// of one id come from one partition, so one collector at a time merges it.
func (s *Redis) Apply(ctx context.Context, events []*job.Event) error {
	byID := map[string][]*job.Event{}
	var ids []string
	for _, e := range events {
		if _, ok := byID[e.ID]; !ok {
			ids = append(ids, e.ID)
		}
		byID[e.ID] = append(byID[e.ID], e)
	}
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = s.recKey(id)
	}
	vals, err := s.rdb.MGet(ctx, keys...).Result()
	if err != nil {
		return unavailable(err)
	}
	var changed []string
	_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			var cur job.Record
			if str, ok := vals[i].(string); ok {
				if r, err := decodeRecord([]byte(str)); err == nil {
					cur = *r
				}
			} else if q := s.queue.get(id); q != nil {
				cur = *q
			}
			applied := false
			for _, e := range byID[id] {
				applied = cur.Apply(e) || applied
			}
			if !applied {
				continue
			}
			v, _ := json.Marshal(storedRecord{Record: &cur, Client: cur.Client, Gen: cur.Gen})
			p.Set(ctx, keys[i], v, s.opts.TTL)
			changed = append(changed, id)
		}
		if len(changed) > 0 {
			p.Publish(ctx, s.channel(), strings.Join(changed, " "))
		}
		return nil
	})
	if err != nil {
		return unavailable(err)
	}
	s.queue.forget(ids)
	return nil
}

// listen relays change announcements from every collector to local pollers.
func (s *Redis) listen() {
	defer s.done.Done()
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-s.stop; cancel() }()
	for ctx.Err() == nil {
		ps := s.rdb.Subscribe(ctx, s.channel())
		ch := ps.Channel()
	recv:
		for {
			select {
			case <-ctx.Done():
				break recv
			case m, ok := <-ch:
				if !ok {
					break recv
				}
				for _, id := range strings.Fields(m.Payload) {
					s.hub.notify(id)
				}
			}
		}
		_ = ps.Close()
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// Watch implements Store.
func (s *Redis) Watch(id string) (<-chan struct{}, func()) { return s.hub.watch(id) }

// Claim implements Store with SET NX.
func (s *Redis) Claim(ctx context.Context, client, key, id string) (string, bool, error) {
	k := s.idemKey(client, key)
	ok, err := s.rdb.SetNX(ctx, k, id, s.opts.TTL).Result()
	if err != nil {
		return "", false, unavailable(err)
	}
	if ok {
		return id, true, nil
	}
	bound, err := s.rdb.Get(ctx, k).Result()
	if errors.Is(err, redis.Nil) { // expired in between: try once more
		return s.Claim(ctx, client, key, id)
	}
	if err != nil {
		return "", false, unavailable(err)
	}
	return bound, false, nil
}

// Unclaim implements Store.
func (s *Redis) Unclaim(ctx context.Context, client, key string) error {
	return s.rdb.Del(ctx, s.idemKey(client, key)).Err()
}

// Ping implements Store.
func (s *Redis) Ping(ctx context.Context) error {
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		return unavailable(err)
	}
	return nil
}

// Close writes what is queued and disconnects.
func (s *Redis) Close() error {
	close(s.stop)
	s.done.Wait()
	return s.rdb.Close()
}
