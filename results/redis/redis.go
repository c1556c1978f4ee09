package redis

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/sluice-gw/sluice/internal/redissub"
	"github.com/sluice-gw/sluice/internal/retry"

	"github.com/sluice-gw/sluice/job"
	"github.com/sluice-gw/sluice/results"
	"github.com/sluice-gw/sluice/results/internal/accept"
	"github.com/sluice-gw/sluice/results/internal/record"
	"github.com/sluice-gw/sluice/results/internal/watch"
)

// Options configure the Redis store. Zero values mean the documented
// defaults.
type Options struct {
	// Addr is Redis's host:port. Default 127.0.0.1:6379.
	Addr     string
	Password string
	DB       int
	// KeyPrefix starts every key the store writes, and its change
	// channel. Default "sluice:".
	KeyPrefix string
	// TTL is how long a record lives after its last update (a Redis TTL);
	// an idempotency key lives as long. Default results.DefaultTTL (24h).
	TTL time.Duration
	// RouteTTL overrides TTL for the records of the routes it names.
	RouteTTL map[string]time.Duration
	// MaxPending bounds the accepted records waiting in memory while Redis
	// is slow or away; past it Admit refuses. Default
	// results.DefaultMaxPending.
	MaxPending int
	// StopTimeout bounds how long Run, once its ctx ended, keeps trying to
	// write the accepted records still in memory, so it cannot hang while
	// Redis is away. Default 5s.
	StopTimeout time.Duration
}

// DefaultAddr, DefaultKeyPrefix: the defaults of Options.Addr and
// Options.KeyPrefix.
const (
	DefaultAddr      = "127.0.0.1:6379"
	DefaultKeyPrefix = "sluice:"
)

// withDefaults fills the zero options and reports invalid ones.
func (o Options) withDefaults() (Options, error) {
	if o.TTL < 0 || o.MaxPending < 0 || o.StopTimeout < 0 || o.DB < 0 {
		return o, fmt.Errorf("open result store: negative option (ttl %v, max pending %d, stop timeout %v, db %d)",
			o.TTL, o.MaxPending, o.StopTimeout, o.DB)
	}
	if o.Addr == "" {
		o.Addr = DefaultAddr
	}
	if o.KeyPrefix == "" {
		o.KeyPrefix = DefaultKeyPrefix
	}
	if o.TTL == 0 {
		o.TTL = results.DefaultTTL
	}
	for r, d := range o.RouteTTL {
		if d <= 0 {
			return o, fmt.Errorf("open result store: ttl %v of route %q", d, r)
		}
	}
	if o.MaxPending == 0 {
		o.MaxPending = results.DefaultMaxPending
	}
	if o.StopTimeout == 0 {
		o.StopTimeout = 5 * time.Second
	}
	return o, nil
}

// Store is a results.Store shared by every sluice process: any ingress
// answers any poll. Records expire TTL after their last update (Redis
// TTL). New requests (Accept) are written in pipelined batches every few
// milliseconds, so a Redis outage never slows or fails a submit (Admit
// refuses new ones once MaxPending wait); polls answer
// results.ErrUnavailable while Redis is away. Events are merged by a
// script per record, so collectors in any number of processes lose no
// update. Collectors announce changed ids on a pub/sub channel, which
// wakes long polls in every process.
//
// Open starts nothing and connects lazily. Before Run, Accept queues and
// Get finds the queued records, Apply, Claim and Release go to Redis at
// once, but nothing accepted is written and Watch hears only this
// process's own Applies. Run writes accepted records and listens to the
// change channel until its ctx ends, then writes what is still queued
// (for at most StopTimeout) and returns; Close disconnects after.
type Store struct {
	rdb       *goredis.Client
	opts      Options
	hub       watch.Hub
	ran       atomic.Bool
	closeOnce sync.Once
	closeErr  error
	queue     *accept.Queue
}

var _ results.Store = (*Store)(nil)

// redisCallTimeout bounds one pipeline of the flush loop.
const redisCallTimeout = 2 * time.Second

// flushInterval is how often Run writes accepted records.
const flushInterval = 5 * time.Millisecond

// Open checks opts and makes the client; it starts nothing and does not
// connect: a Redis that is down now is retried later (see Store).
func Open(opts Options) (*Store, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Store{
		rdb: goredis.NewClient(&goredis.Options{Addr: opts.Addr, Password: opts.Password, DB: opts.DB,
			DialTimeout: 2 * time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second,
			MaxRetries: 1}),
		opts: opts, queue: accept.New(opts.MaxPending),
	}, nil
}

// Run writes accepted records every few milliseconds and relays change
// announcements to this process's watchers until ctx ends; then it
// writes the accepted records still in memory, trying for at most
// StopTimeout, and returns. It returns an error wrapping
// results.ErrUnavailable when some are left unwritten.
func (s *Store) Run(ctx context.Context) error {
	if s.ran.Swap(true) {
		return errors.New("result store: Run called twice")
	}
	var wg sync.WaitGroup
	wg.Go(func() { s.listen(ctx) })
	t := time.NewTicker(flushInterval)
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-t.C:
			_ = s.flush(ctx, false) // what fails stays queued for the next tick
		}
	}
	t.Stop()
	wg.Wait()
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.StopTimeout)
	defer cancel()
	if err := s.flush(fctx, true); err != nil {
		return fmt.Errorf("result store: %d accepted records not written: %w", s.queue.Len(), unavailable(err))
	}
	return nil
}

func (s *Store) recKey(id string) string { return s.opts.KeyPrefix + "r:" + id }

// ttlOf is how long a record of route lives after its last update.
func (s *Store) ttlOf(route string) time.Duration {
	if d, ok := s.opts.RouteTTL[route]; ok {
		return d
	}
	return s.opts.TTL
}
func (s *Store) idemKey(client, key string) string {
	return s.opts.KeyPrefix + "i:" + client + "\x00" + key
}
func (s *Store) leaseKey(client, key string) string {
	return s.opts.KeyPrefix + "l:" + client + "\x00" + key
}
func (s *Store) channel() string { return s.opts.KeyPrefix + "changed" }

func unavailable(err error) error { return fmt.Errorf("%w: %v", results.ErrUnavailable, err) }

// Admit implements results.results.Store: it refuses once MaxPending accepted records
// wait for Redis.
func (s *Store) Admit() error { return s.queue.Admit() }

// Accept queues rec for the next pipelined write.
func (s *Store) Accept(_ context.Context, rec *job.Record) error {
	s.queue.Put(rec)
	return nil
}

// flush writes accepted records, accept.Chunk per pipeline, never over a
// record an event already made. Each pipeline gets redisCallTimeout. It
// stops at the first failure — the rest stay queued for the next tick —
// unless all is set: then (Run, at its end) it retries, backing off, until
// ctx ends. Otherwise it
// writes at most what was queued when it began, so a steady stream of
// submits cannot keep it from returning.
func (s *Store) flush(ctx context.Context, all bool) error {
	again := retry.Backoff(50*time.Millisecond, time.Second)
	left := s.queue.Len()
	for left > 0 || all {
		if err := ctx.Err(); err != nil {
			return err
		}
		batch := s.queue.Batch(accept.Chunk)
		if len(batch) == 0 {
			return nil
		}
		err := s.writeAccepted(ctx, batch)
		if err == nil {
			s.queue.Written(batch)
			left -= len(batch)
			continue
		}
		if !all {
			return err
		}
		if !retry.Sleep(ctx, again.NextBackOff()) {
			return err
		}
	}
	return nil
}

func (s *Store) writeAccepted(ctx context.Context, batch []*job.Record) error {
	ctx, cancel := context.WithTimeout(ctx, redisCallTimeout)
	defer cancel()
	_, err := s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for _, r := range batch {
			v, err := record.Encode(r)
			if err != nil {
				return err
			}
			p.SetNX(ctx, s.recKey(r.ID), v, s.ttlOf(r.Route))
		}
		return nil
	})
	return err
}

// Get reads id's record, from Redis or the accepted records in memory. A
// record leaves memory only after it is in Redis, but it may do so between
// the two looks: so a miss in memory is followed by a second look in
// Redis, else a poll right after the 202 could answer 404.
func (s *Store) Get(ctx context.Context, id string) (*job.Record, error) {
	r, err := s.queue.Lookup(id, func() (*job.Record, error) { return s.read(ctx, id) })
	if err != nil {
		return nil, err
	}
	if r == nil {
		return nil, results.ErrNotFound
	}
	return r, nil
}

// GetMany returns the records of ids in one round trip (MGET), nil for
// an id Redis does not hold: what workers ask of a whole batch handed out
// again. Unlike Get it does not look at accepted records still in memory
// (those are queued, never settled).
func (s *Store) GetMany(ctx context.Context, ids []string) ([]*job.Record, error) {
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = s.recKey(id)
	}
	vals, err := s.rdb.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, unavailable(err)
	}
	out := make([]*job.Record, len(ids))
	for i, v := range vals {
		str, ok := v.(string)
		if !ok { // nil: no such key
			continue
		}
		if out[i], err = record.Decode(ids[i], []byte(str)); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// read returns id's record in Redis, or nil.
func (s *Store) read(ctx context.Context, id string) (*job.Record, error) {
	v, err := s.rdb.Get(ctx, s.recKey(id)).Bytes()
	if errors.Is(err, goredis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, unavailable(err)
	}
	return record.Decode(id, v)
}

// applyScript merges a record's events into it as job.Record.Apply does,
// in one atomic step. Since a record always equals the projection of the
// last event it took, the script only compares merge keys and stores the
// winning event's projection, encoded by Go. It reads the stored key from
// the value's first bytes: in the compact form (record.Encode) the
// version byte 1, the status code (its rank, but failed, code 4, ranks 3
// and an other status, code 5, ranks 0), then generation and attempts as
// uvarints; in the legacy JSON form a leading "merge" array, or, written
// before merge keys existed, the whole record decoded with cjson.
//
// KEYS[1]: the record. ARGV[1]: ttl in ms. Then four per event, in order:
// generation, attempts, status rank, the record the event makes.
// Returns 1 when the record changed.
var applyScript = goredis.NewScript(`
local has, g, a, r = false, 0, 0, 0
local head = redis.call('GETRANGE', KEYS[1], 0, 79)
local pos = 3
local function uvarint()
  local x, m = 0, 1
  while true do
    local c = string.byte(head, pos)
    if c == nil then
      return nil
    end
    pos = pos + 1
    x = x + (c % 128) * m
    if c < 128 then
      return x
    end
    m = m * 128
  end
end
if head ~= '' then
  local hg, ha, hr = string.match(head, '^{"merge":%[(%-?%d+),(%-?%d+),(%-?%d+)%]')
  if string.byte(head, 1) == 1 then
    local code = string.byte(head, 2) or 0
    local cg = uvarint()
    local ca = uvarint()
    if cg and ca then
      has, g, a, r = true, cg, ca, code
      if code == 4 then
        r = 3
      elseif code > 4 then
        r = 0
      end
    end
  elseif hg then
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
// scripts pipelined (in chunks of at most accept.Chunk records and about
// applyChunkBytes), then one announcement of the ids that changed. Each
// record's read, merge and write is atomic, so collectors competing for
// the result queue (RabbitMQ) lose no update. A failure part way leaves
// the records before it merged; applying the batch again is harmless.
func (s *Store) Apply(ctx context.Context, events []*job.Event) error {
	order, byID := record.GroupByID(events)
	var changed []string
	var calls []applyCall
	size := 0
	for i, id := range order {
		args := make([]any, 0, 1+4*len(byID[id]))
		args = append(args, s.ttlOf(byID[id][0].Route).Milliseconds())
		for _, e := range byID[id] {
			v, err := record.Encode(record.Project(e))
			if err != nil {
				return fmt.Errorf("encode record %s: %w", id, err)
			}
			args = append(args, e.Gen, e.Attempts, e.Status.Rank(), v)
			size += len(v)
		}
		calls = append(calls, applyCall{id, args})
		if size < applyChunkBytes && len(calls) < accept.Chunk && i < len(order)-1 {
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
	s.queue.Forget(order)
	return nil
}

// applyChunk runs the merge scripts of calls in one pipeline and returns
// the ids of the records that changed.
func (s *Store) applyChunk(ctx context.Context, calls []applyCall) ([]string, error) {
	run := func() ([]*goredis.Cmd, error) {
		cmds := make([]*goredis.Cmd, len(calls))
		_, err := s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
			for i, c := range calls {
				cmds[i] = applyScript.EvalSha(ctx, p, []string{s.recKey(c.id)}, c.args...)
			}
			return nil
		})
		return cmds, err
	}
	cmds, err := run()
	var changed []string
	if err != nil && goredis.HasErrorPrefix(err, "NOSCRIPT") {
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
func changedIDs(cmds []*goredis.Cmd, calls []applyCall) []string {
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
func (s *Store) announce(ctx context.Context, changed []string) error {
	if len(changed) == 0 {
		return nil
	}
	return s.rdb.Publish(ctx, s.channel(), strings.Join(changed, " ")).Err()
}

// listen relays change announcements from every collector to local
// pollers until ctx ends. Each time the subscription is (re)established —
// go-redis reconnects and subscribes again by itself after an error — it
// wakes every local poller, since announcements made meanwhile were lost.
// It pings when idle, so a dead connection is noticed and replaced; while
// Redis is away it backs off between tries. The end of ctx ends a pending
// read by closing the subscription.
func (s *Store) listen(ctx context.Context) {
	// Long polls wake within 2 s of Redis's return.
	redissub.Listen(ctx, s.rdb, s.channel(), time.Second, s.hub.NotifyAll, func(payload string) {
		for _, id := range strings.Fields(payload) {
			s.hub.Notify(id)
		}
	})
}

// Watch implements results.Store.
func (s *Store) Watch(id string) (<-chan struct{}, func()) { return s.hub.Watch(id) }

// claimScript binds an idempotency key atomically. The key's value is
// "<state>:<id>" with state o (owned), r (released) or q (queued); a bare
// id is a binding written before claims had states (a queued one). An
// owner's lease is a second key that expires by itself, so no clock is
// compared.
//
// KEYS[1]: the binding, KEYS[2]: the lease. ARGV: id, lease ms, ttl ms.
// Returns {bound id, state}.
var claimScript = goredis.NewScript(`
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
var releaseScript = goredis.NewScript(`
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

// Claim implements results.Store with one script, atomic across processes.
func (s *Store) Claim(ctx context.Context, client, key, id string, lease time.Duration) (results.Claim, error) {
	res, err := claimScript.Run(ctx, s.rdb,
		[]string{s.idemKey(client, key), s.leaseKey(client, key)},
		id, max(lease.Milliseconds(), 1), s.opts.TTL.Milliseconds()).StringSlice()
	if err != nil {
		return results.Claim{}, unavailable(err)
	}
	if len(res) != 2 {
		return results.Claim{}, unavailable(fmt.Errorf("claim script answered %q", res))
	}
	c := results.Claim{ID: res[0]}
	switch res[1] {
	case "o":
		c.State = results.ClaimOwned
	case "q":
		c.State = results.ClaimQueued
	default:
		c.State = results.ClaimPending
	}
	return c, nil
}

// Release implements results.Store. It changes nothing unless id owns the key.
func (s *Store) Release(ctx context.Context, client, key, id string, queued bool) error {
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

// Ping implements results.Store.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		return unavailable(err)
	}
	return nil
}

// Close disconnects. Call it after Run returned (or when Run was never
// called): it writes nothing of what is still in memory. Later calls
// return the first call's result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.rdb.Close() })
	return s.closeErr
}
