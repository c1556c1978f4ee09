package results

import (
	"context"
	"errors"
	"fmt"
	"net"
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
	KeyPrefix string        // default "sluice:"
	TTL       time.Duration // default 24h
	// MaxPending bounds the accepted records waiting in memory while Redis
	// is slow or away; past it Admit refuses. Default DefaultMaxPending.
	MaxPending int
	// CloseTimeout bounds how long Close keeps trying to write the records
	// still in memory. Default 5s.
	CloseTimeout time.Duration
}

// Redis is a Store shared by every sluice process: any ingress answers any
// poll. Records expire ttl after their last update (Redis TTL). New
// requests (Accept) are written in pipelined batches every few
// milliseconds, so a Redis outage never slows or fails a submit (Admit
// refuses new ones once MaxPending wait); polls answer ErrUnavailable
// while Redis is away. Events are merged by a script per record, so
// collectors in any number of processes lose no update. Collectors
// announce changed ids on a pub/sub channel, which wakes long polls in
// every process. OpenRedis starts a flush loop and the channel listener;
// Close stops and waits for both.
type Redis struct {
	rdb       *redis.Client
	ps        *redis.PubSub // the listener's; Close closes it to end a pending read
	opts      RedisOptions
	hub       hub
	ctx       context.Context // ends at Close: cuts short the loops' Redis calls
	cancel    context.CancelFunc
	closeOnce sync.Once
	closeErr  error
	done      sync.WaitGroup
	queue     *acceptQueue
}

var _ Store = (*Redis)(nil)

// redisCallTimeout bounds one pipeline of the flush loop.
const redisCallTimeout = 2 * time.Second

// OpenRedis connects (lazily: a Redis that is down now is retried later).
func OpenRedis(opts RedisOptions) *Redis {
	if opts.KeyPrefix == "" {
		opts.KeyPrefix = "sluice:"
	}
	if opts.TTL <= 0 {
		opts.TTL = 24 * time.Hour
	}
	if opts.CloseTimeout <= 0 {
		opts.CloseTimeout = 5 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Redis{
		rdb: redis.NewClient(&redis.Options{Addr: opts.Addr, Password: opts.Password, DB: opts.DB,
			DialTimeout: 2 * time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second,
			MaxRetries: 1}),
		opts: opts, hub: hub{w: map[string][]chan struct{}{}}, ctx: ctx, cancel: cancel,
		queue: newAcceptQueue(opts.MaxPending),
	}
	s.ps = s.rdb.Subscribe(ctx) // no channel yet: no connection either
	s.done.Add(2)
	go func() {
		defer s.done.Done()
		every(5*time.Millisecond, s.ctx.Done(), func() { _ = s.flush(s.ctx, false) })
	}()
	go func() { defer s.done.Done(); s.listen() }()
	return s
}

func (s *Redis) recKey(id string) string { return s.opts.KeyPrefix + "r:" + id }
func (s *Redis) idemKey(client, key string) string {
	return s.opts.KeyPrefix + "i:" + client + "\x00" + key
}
func (s *Redis) leaseKey(client, key string) string {
	return s.opts.KeyPrefix + "l:" + client + "\x00" + key
}
func (s *Redis) channel() string { return s.opts.KeyPrefix + "changed" }

func unavailable(err error) error { return fmt.Errorf("%w: %v", ErrUnavailable, err) }

// Admit implements Store: it refuses once MaxPending accepted records
// wait for Redis.
func (s *Redis) Admit() error { return s.queue.admit() }

// Accept queues rec for the next pipelined write.
func (s *Redis) Accept(_ context.Context, rec *job.Record) error {
	s.queue.put(rec)
	return nil
}

// flush writes accepted records, flushChunk per pipeline, never over a
// record an event already made. Each pipeline gets redisCallTimeout. It
// stops at the first failure — the rest stay queued for the next tick —
// unless all is set: then (Close) it retries until ctx ends. Otherwise it
// writes at most what was queued when it began, so a steady stream of
// submits cannot keep it from returning.
func (s *Redis) flush(ctx context.Context, all bool) error {
	left := s.queue.len()
	for left > 0 || all {
		if err := ctx.Err(); err != nil {
			return err
		}
		batch := s.queue.batch(flushChunk)
		if len(batch) == 0 {
			return nil
		}
		err := s.writeAccepted(ctx, batch)
		if err == nil {
			s.queue.written(batch)
			left -= len(batch)
			continue
		}
		if !all {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

func (s *Redis) writeAccepted(ctx context.Context, batch []*job.Record) error {
	ctx, cancel := context.WithTimeout(ctx, redisCallTimeout)
	defer cancel()
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, r := range batch {
			v, err := encodeRecord(r)
			if err != nil {
				return err
			}
			p.SetNX(ctx, s.recKey(r.ID), v, s.opts.TTL)
		}
		return nil
	})
	return err
}

// Get reads id's record, from Redis or the accepted records in memory. A
// record leaves memory only after it is in Redis, but it may do so between
// the two looks: so a miss in memory is followed by a second look in
// Redis, else a poll right after the 202 could answer 404.
func (s *Redis) Get(ctx context.Context, id string) (*job.Record, error) {
	r, err := s.queue.lookup(id, func() (*job.Record, error) { return s.read(ctx, id) })
	if err != nil {
		return nil, err
	}
	if r == nil {
		return nil, ErrNotFound
	}
	return r, nil
}

// read returns id's record in Redis, or nil.
func (s *Redis) read(ctx context.Context, id string) (*job.Record, error) {
	v, err := s.rdb.Get(ctx, s.recKey(id)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, unavailable(err)
	}
	return decodeRecord(v)
}

// applyScript merges a record's events into it as job.Record.Apply does,
// in one atomic step. Since a record always equals the projection of the
// last event it took, the script only compares merge keys and stores the
// winning event's projection, encoded by Go. It reads the stored key from
// the value's first bytes (storedRecord leads with it); a record written
// before merge keys existed is decoded with cjson.
//
// KEYS[1]: the record. ARGV[1]: ttl in ms. Then four per event, in order:
// generation, attempts, status rank, the record the event makes.
// Returns 1 when the record changed.
var applyScript = redis.NewScript(`
local has, g, a, r = false, 0, 0, 0
local head = redis.call('GETRANGE', KEYS[1], 0, 79)
if head ~= '' then
  local hg, ha, hr = string.match(head, '^{"merge":%[(%-?%d+),(%-?%d+),(%-?%d+)%]')
  if hg then
    has, g, a, r = true, tonumber(hg), tonumber(ha), tonumber(hr)
  else
    local ok, rec = pcall(cjson.decode, redis.call('GET', KEYS[1]))
    if ok and type(rec) == 'table' then
      local ranks = {in_flight = 1, retrying = 2, succeeded = 3, failed = 3}
      has, g, a = true, tonumber(rec.gen) or 0, tonumber(rec.attempts) or 0
      r = ranks[rec.status] or 0
    end
  end
end
local win
for i = 2, #ARGV, 4 do
  local eg, ea, er = tonumber(ARGV[i]), tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local take = not has
  if has and not (eg == g and r == 3) then
    take = eg > g or (eg == g and (ea > a or (ea == a and er > r)))
  end
  if take then
    has, g, a, r, win = true, eg, ea, er, i + 3
  end
end
if not win then
  return 0
end
redis.call('SET', KEYS[1], ARGV[win], 'PX', ARGV[1])
return 1
`)

// applyChunkBytes bounds the encoded records sent in one pipeline, so a
// batch of large responses is neither one write that outlasts its timeout
// nor all in memory at once.
const applyChunkBytes = 8 << 20

// applyCall is one record's merge script.
type applyCall struct {
	id   string
	args []any
}

// Apply merges events into their records: one script per record, the
// scripts pipelined (in chunks of at most flushChunk records and about
// applyChunkBytes), then one announcement of the ids that changed. Each
// record's read, merge and write is atomic, so collectors competing for
// the result queue (RabbitMQ) lose no update. A failure part way leaves
// the records before it merged; applying the batch again is harmless.
func (s *Redis) Apply(ctx context.Context, events []*job.Event) error {
	order, byID := groupByID(events)
	ttl := s.opts.TTL.Milliseconds()
	var changed []string
	var calls []applyCall
	size := 0
	for i, id := range order {
		args := make([]any, 0, 1+4*len(byID[id]))
		args = append(args, ttl)
		for _, e := range byID[id] {
			v, err := encodeRecord(project(e))
			if err != nil {
				return fmt.Errorf("encode record %s: %w", id, err)
			}
			args = append(args, e.Gen, e.Attempts, e.Status.Rank(), v)
			size += len(v)
		}
		calls = append(calls, applyCall{id, args})
		if size < applyChunkBytes && len(calls) < flushChunk && i < len(order)-1 {
			continue
		}
		ch, err := s.applyChunk(ctx, calls)
		changed = append(changed, ch...)
		if err != nil {
			_ = s.announce(ctx, changed) // what changed stays changed
			return unavailable(err)
		}
		calls, size = nil, 0
	}
	if err := s.announce(ctx, changed); err != nil {
		return unavailable(err)
	}
	s.queue.forget(order)
	return nil
}

// applyChunk runs the merge scripts of calls in one pipeline and returns
// the ids of the records that changed.
func (s *Redis) applyChunk(ctx context.Context, calls []applyCall) ([]string, error) {
	run := func() ([]*redis.Cmd, error) {
		cmds := make([]*redis.Cmd, len(calls))
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, c := range calls {
				cmds[i] = applyScript.EvalSha(ctx, p, []string{s.recKey(c.id)}, c.args...)
			}
			return nil
		})
		return cmds, err
	}
	cmds, err := run()
	var changed []string
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		// Redis restarted or its scripts were flushed: load it and run the
		// chunk again (scripts that did run change nothing the second time).
		if err = applyScript.Load(ctx, s.rdb).Err(); err == nil {
			changed = changedIDs(cmds, calls)
			cmds, err = run()
		}
	}
	return append(changed, changedIDs(cmds, calls)...), err
}

// changedIDs lists the records whose script reported a change.
func changedIDs(cmds []*redis.Cmd, calls []applyCall) []string {
	var out []string
	for i, c := range cmds {
		if n, err := c.Int(); err == nil && n == 1 {
			out = append(out, calls[i].id)
		}
	}
	return out
}

// announce tells every process's listener which records changed. A lost
// announcement leaves long polls waiting out their ?wait; listeners wake
// every poller whenever their subscription is renewed, which covers Redis
// going away.
func (s *Redis) announce(ctx context.Context, changed []string) error {
	if len(changed) == 0 {
		return nil
	}
	return s.rdb.Publish(ctx, s.channel(), strings.Join(changed, " ")).Err()
}

// listen relays change announcements from every collector to local
// pollers until Close. Each time the subscription is (re)established —
// go-redis reconnects and subscribes again by itself after an error — it
// wakes every local poller, since announcements made meanwhile were lost.
// It pings when idle, so a dead connection is noticed and replaced; Close
// ends it by closing the subscription under a pending read.
func (s *Redis) listen() {
	ps := s.ps
	_ = ps.Subscribe(s.ctx, s.channel()) // a failed subscribe is retried by Receive
	idle := 0
	for s.ctx.Err() == nil {
		m, err := ps.ReceiveTimeout(s.ctx, time.Second)
		switch m := m.(type) {
		case *redis.Subscription:
			s.hub.notifyAll()
		case *redis.Message:
			for _, id := range strings.Fields(m.Payload) {
				s.hub.notify(id)
			}
		}
		var nerr net.Error
		switch {
		case err == nil:
			idle = 0
		case errors.As(err, &nerr) && nerr.Timeout():
			if idle++; idle%5 == 0 {
				_ = ps.Ping(s.ctx) // a failed ping makes go-redis reconnect
			}
		default:
			select { // Redis is away: Receive dials again on the next call
			case <-s.ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

// Watch implements Store.
func (s *Redis) Watch(id string) (<-chan struct{}, func()) { return s.hub.watch(id) }

// claimScript binds an idempotency key atomically. The key's value is
// "<state>:<id>" with state o (owned), r (released) or q (queued); a bare
// id is a binding written before claims had states (a queued one). An
// owner's lease is a second key that expires by itself, so no clock is
// compared.
//
// KEYS[1]: the binding, KEYS[2]: the lease. ARGV: id, lease ms, ttl ms.
// Returns {bound id, state}.
var claimScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
local id = ARGV[1]
if v then
  local st = string.sub(v, 1, 1)
  if string.sub(v, 2, 2) == ':' then
    id = string.sub(v, 3)
  else
    st, id = 'q', v
  end
  if st == 'q' then
    return {id, 'q'}
  end
  if st == 'o' and redis.call('EXISTS', KEYS[2]) == 1 then
    return {id, 'p'}
  end
end
redis.call('SET', KEYS[1], 'o:' .. id, 'PX', ARGV[3])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
return {id, 'o'}
`)

// releaseScript ends an owned claim, if ARGV[1] still owns KEYS[1].
// ARGV: id, "1" when queued, ttl ms.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= 'o:' .. ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[2])
if ARGV[2] == '1' then
  redis.call('SET', KEYS[1], 'q:' .. ARGV[1], 'PX', ARGV[3])
else
  redis.call('SET', KEYS[1], 'r:' .. ARGV[1], 'KEEPTTL')
end
return 1
`)

// Claim implements Store with one script, atomic across processes.
func (s *Redis) Claim(ctx context.Context, client, key, id string, lease time.Duration) (Claim, error) {
	res, err := claimScript.Run(ctx, s.rdb,
		[]string{s.idemKey(client, key), s.leaseKey(client, key)},
		id, max(lease.Milliseconds(), 1), s.opts.TTL.Milliseconds()).StringSlice()
	if err != nil {
		return Claim{}, unavailable(err)
	}
	if len(res) != 2 {
		return Claim{}, unavailable(fmt.Errorf("claim script answered %q", res))
	}
	c := Claim{ID: res[0]}
	switch res[1] {
	case "o":
		c.State = ClaimOwned
	case "q":
		c.State = ClaimQueued
	default:
		c.State = ClaimPending
	}
	return c, nil
}

// Release implements Store. It changes nothing unless id owns the key.
func (s *Redis) Release(ctx context.Context, client, key, id string, queued bool) error {
	q := "0"
	if queued {
		q = "1"
	}
	err := releaseScript.Run(ctx, s.rdb,
		[]string{s.idemKey(client, key), s.leaseKey(client, key)},
		id, q, s.opts.TTL.Milliseconds()).Err()
	if err != nil {
		return unavailable(err)
	}
	return nil
}

// Ping implements Store.
func (s *Redis) Ping(ctx context.Context) error {
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		return unavailable(err)
	}
	return nil
}

// Close stops the flush loop and the listener and waits for them, writes
// the accepted records still in memory — trying for at most CloseTimeout,
// so it cannot hang while Redis is away — and disconnects. Later calls
// return the first call's result.
func (s *Redis) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		_ = s.ps.Close() // ends the listener's pending read
		s.done.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), s.opts.CloseTimeout)
		defer cancel()
		var err error
		if ferr := s.flush(ctx, true); ferr != nil {
			err = fmt.Errorf("result store: %d accepted records not written: %w", s.queue.len(), unavailable(ferr))
		}
		s.closeErr = errors.Join(err, s.rdb.Close())
	})
	return s.closeErr
}
