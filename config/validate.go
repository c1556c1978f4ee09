package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/schemas"
)

var (
	backendName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	methodName  = regexp.MustCompile(`^[A-Z]{1,16}$`)
)

// httpURL parses raw as an http:// or https:// url with a host; nil when
// it is not one. Backend urls, jwks_url, cors origins and the tracing
// collector all take this shape.
func httpURL(raw string) *url.URL {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil
	}
	return u
}

// validPort reports whether p is a port number, 1 to 65535.
func validPort(p string) bool {
	n, err := strconv.Atoi(p)
	return err == nil && n >= 1 && n <= 65535
}

// Loopback reports whether addr names only this machine: localhost (any
// case) or a loopback address, with or without a port ("127.0.0.1:9090",
// "[::1]:9090", "localhost"). The admin_listen check, the admin port's
// Host check, the JWKS url warning and the demo all ask it.
func Loopback(addr string) bool {
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// humanSize writes n bytes as "1 MiB", "512 KiB" or "100 B".
func humanSize(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

// Validate reports every problem of an already defaulted config at once, one
// error per problem, each starting with its key path.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	// Zero values mean defaults, so a 0 written out for a key whose 0 has
	// no meaning of its own would silently become the default: refuse it.
	noZero := func(key, meaning string) {
		if c.zeros[key] {
			bad(key, "0 is not a value here (%s); leave the key out for the default", meaning)
		}
	}
	noZero("shutdown_timeout", "must be > 0")
	noZero("publish_timeout", "must be > 0")
	noZero("max_inflight", "must be >= 1")
	noZero("max_connections", "must be >= 1")
	noZero("max_long_polls", "must be >= 1")
	noZero("results.ttl", "must be > 0")
	noZero("group_commit.max_requests", "must be >= 1; 1 turns group commit off")
	noZero("group_commit.max_bytes", "must be > 0")
	noZero("group_commit.writes", "must be >= 1")
	for i := range c.Backends {
		key := fmt.Sprintf("backends[%d]", i)
		noZero(key+".concurrency", "must be >= 1")
		noZero(key+".burst", "must be >= 1")
		noZero(key+".timeout", "must be > 0")
		noZero(key+".retry.max_attempts", "must be >= 1; 1 means no retries")
		noZero(key+".retry.initial_backoff", "must be > 0")
		noZero(key+".retry.max_backoff", "must be > 0")
		noZero(key+".breaker.cooldown", "must be > 0")
		noZero(key+".breaker.probes", "must be >= 1")
	}
	for i := range c.Routes {
		noZero(fmt.Sprintf("routes[%d].max_body", i), "must be > 0")
		noZero(fmt.Sprintf("routes[%d].ttl", i), "must be > 0")
		noZero(fmt.Sprintf("routes[%d].ack.status", i), "must be 200, 201 or 202")
		noZero(fmt.Sprintf("routes[%d].rate_limit.burst", i), "must be >= 1")
	}
	noZero("auth.jwt.jwks_refresh", "must be > 0")
	noZero("auth.jwt.jwks_min_refresh", "must be > 0")
	checkAddr := func(key, addr string) {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			bad(key, "must be host:port, got %q", addr)
		}
	}
	checkAddr("listen", c.Listen)
	checkAddr("admin_listen", c.AdminListen)
	if host, _, err := net.SplitHostPort(c.AdminListen); err == nil && c.AdminToken == "" && !Loopback(host) {
		bad("admin_listen", "%q is reachable from other hosts, and the admin API can replay, pause and retune every backend: set admin_token (or $SLUICE_ADMIN_TOKEN), or listen on 127.0.0.1", c.AdminListen)
	}
	if c.MaxConnections < 0 {
		bad("max_connections", "must be >= 1")
	}
	if c.MaxConnectionsPerIP < 0 {
		bad("max_connections_per_ip", "must be >= 0 (0: no cap)")
	}
	if c.MaxLongPolls < 0 {
		bad("max_long_polls", "must be >= 1")
	}
	if c.GroupCommit.MaxRequests < 0 {
		bad("group_commit.max_requests", "must be >= 1; 1 turns group commit off")
	}
	if c.GroupCommit.MaxBytes < 0 {
		bad("group_commit.max_bytes", "must be > 0")
	}
	if c.GroupCommit.Writes < 0 {
		bad("group_commit.writes", "must be >= 1")
	}
	if c.Ack != "durable" && c.Ack != "fast" {
		bad("ack", "must be durable or fast, got %q", c.Ack)
	}
	if c.ShutdownTimeout < 0 {
		bad("shutdown_timeout", "must be > 0")
	}
	switch {
	case c.PublishTimeout < 0:
		bad("publish_timeout", "must be > 0")
	case c.PublishTimeout > c.ShutdownTimeout/2 && c.ShutdownTimeout > 0:
		bad("publish_timeout", "must be at most half of shutdown_timeout (%s): a stop waits for the writes under way", c.ShutdownTimeout.D())
	}
	if c.MaxInflight < 0 {
		bad("max_inflight", "must be >= 0")
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "must be debug, info, warn or error, got %q", c.Log.Level)
	}
	if c.Log.Format != "json" && c.Log.Format != "console" {
		bad("log.format", "must be json or console, got %q", c.Log.Format)
	}

	switch c.Broker.Kind {
	case "embedded", "kafka", "rabbitmq":
	default:
		bad("broker.kind", "must be embedded, kafka or rabbitmq, got %q", c.Broker.Kind)
	}
	if k := c.Broker.Kafka; k != nil {
		if len(k.Brokers) == 0 {
			bad("broker.kafka.brokers", "at least one host:port is required")
		}
		for i, a := range k.Brokers {
			if _, _, err := net.SplitHostPort(a); err != nil {
				bad(fmt.Sprintf("broker.kafka.brokers[%d]", i), "must be host:port, got %q", a)
			}
		}
		if k.Partitions < 0 { // 0: the adapter's default
			bad("broker.kafka.partitions", "must be >= 1")
		}
		if strings.ContainsAny(k.TopicPrefix, " /\\") {
			bad("broker.kafka.topic_prefix", "must be a valid Kafka topic name prefix, got %q", k.TopicPrefix)
		}
		if k.MaxMessageBytes < 2*broker.Overhead {
			bad("broker.kafka.max_message_bytes", "must be at least %s", humanSize(2*broker.Overhead))
		}
		if k.ReplicationFactor < 0 {
			bad("broker.kafka.replication_factor", "must be >= 1 (0: min(3, brokers))")
		}
		if k.MinInsyncReplicas < 0 {
			bad("broker.kafka.min_insync_replicas", "must be >= 1 (0: replication_factor-1)")
		}
		if k.ReplicationFactor > 0 && k.MinInsyncReplicas > k.ReplicationFactor {
			bad("broker.kafka.min_insync_replicas", "must be <= replication_factor (%d): no write could be confirmed", k.ReplicationFactor)
		}
		if k.Retention < 0 {
			bad("broker.kafka.retention", "must be > 0")
		}
		if k.DeadLetterRetention < 0 {
			bad("broker.kafka.dead_letter_retention", "must be >= 0 (0: forever)")
		}
	}
	if r := c.Broker.RabbitMQ; r != nil {
		if u, err := url.Parse(r.URL); err != nil || (u.Scheme != "amqp" && u.Scheme != "amqps") || u.Host == "" {
			bad("broker.rabbitmq.url", "must be an amqp:// or amqps:// url")
		}
		if r.MaxMessageBytes < 2*broker.Overhead {
			bad("broker.rabbitmq.max_message_bytes", "must be at least %s", humanSize(2*broker.Overhead))
		}
		if r.DeliveryLimit < 0 {
			bad("broker.rabbitmq.delivery_limit", "must be >= 1")
		}
	}
	if c.Broker.Embedded.AckWait < 0 {
		bad("broker.embedded.ack_wait", "must be > 0")
	}
	if e := c.Broker.Embedded; !e.SyncAlways() && e.SyncInterval() <= 0 {
		bad("broker.embedded.sync", "must be \"always\" or a duration such as \"1s\", got %q", e.Sync)
	}
	switch c.Results.Store {
	case "embedded", "redis":
	default:
		bad("results.store", "must be embedded or redis, got %q", c.Results.Store)
	}
	if r := c.Results.Redis; r != nil {
		checkAddr("results.redis.addr", r.Addr)
		if r.DB < 0 {
			bad("results.redis.db", "must be >= 0")
		}
		if r.MaxPending < 0 {
			bad("results.redis.max_pending", "must be >= 1")
		}
	}
	if c.Results.TTL < 0 {
		bad("results.ttl", "must be > 0")
	}
	switch c.Results.KeepResponse {
	case KeepAlways, KeepFailures, KeepNever:
	default:
		bad("results.keep_response", "must be always, failures or never, got %q", c.Results.KeepResponse)
	}
	clients := c.validateAuth(bad)
	c.validateTracing(bad)

	backends := map[string]bool{}
	if len(c.Backends) == 0 {
		bad("backends", "at least one backend is required")
	}
	for i, b := range c.Backends {
		key := fmt.Sprintf("backends[%d]", i)
		switch {
		case !backendName.MatchString(b.Name):
			bad(key+".name", "must be 1-64 letters, digits, '-' or '_', got %q", b.Name)
		case backends[b.Name]:
			bad(key+".name", "duplicate backend %q", b.Name)
		}
		backends[b.Name] = true
		if len(b.URLs) == 0 {
			bad(key+".urls", "at least one url is required")
		}
		for j, raw := range b.URLs {
			if httpURL(raw) == nil {
				bad(fmt.Sprintf("%s.urls[%d]", key, j), "must be an http:// or https:// url, got %q", raw)
			}
		}
		if b.Rate < 0 {
			bad(key+".rate", "must be >= 0")
		}
		if b.Burst < 0 {
			bad(key+".burst", "must be >= 0")
		}
		if b.Concurrency < 0 {
			bad(key+".concurrency", "must be >= 0")
		}
		if b.MaxBacklog < 0 {
			bad(key+".max_backlog", "must be >= 0")
		}
		if b.Timeout < 0 {
			bad(key+".timeout", "must be > 0")
		}
		r := b.Retry
		if r.MaxAttempts < 0 {
			bad(key+".retry.max_attempts", "must be >= 1")
		}
		if r.InitialBackoff < 0 {
			bad(key+".retry.initial_backoff", "must be > 0")
		}
		if r.MaxBackoff < r.InitialBackoff {
			bad(key+".retry.max_backoff", "must be >= retry.initial_backoff (%s)", r.InitialBackoff.D())
		}
		for j, s := range r.OnStatus {
			if s < 100 || s > 599 {
				bad(fmt.Sprintf("%s.retry.on_status[%d]", key, j), "must be an HTTP status 100-599, got %d", s)
			}
		}
		if b.Breaker.Failures != nil && *b.Breaker.Failures < 0 {
			bad(key+".breaker.failures", "must be >= 0")
		}
		if b.Breaker.Cooldown < 0 {
			bad(key+".breaker.cooldown", "must be > 0")
		}
		if b.Breaker.Probes < 0 {
			bad(key+".breaker.probes", "must be >= 1")
		}
	}

	if len(c.Routes) == 0 {
		bad("routes", "at least one route is required")
	}
	names, paths := map[string]bool{}, map[string]bool{}
	for i, r := range c.Routes {
		key := fmt.Sprintf("routes[%d]", i)
		switch {
		case r.Name == "":
			bad(key+".name", "is required")
		case !clientName.MatchString(r.Name):
			bad(key+".name", "must be 1-128 visible ASCII characters without spaces, got %q", r.Name)
		case names[r.Name]:
			bad(key+".name", "duplicate route %q", r.Name)
		}
		names[r.Name] = true
		switch {
		case !strings.HasPrefix(r.Path, "/"):
			bad(key+".path", "must start with \"/\", got %q", r.Path)
		case r.Path == "/v1/requests" || strings.HasPrefix(r.Path, "/v1/requests/"):
			bad(key+".path", "%q is reserved for polling", r.Path)
		case paths[r.Path]:
			bad(key+".path", "duplicate path %q", r.Path)
		}
		paths[r.Path] = true
		for j, m := range r.Methods {
			if !methodName.MatchString(m) {
				bad(fmt.Sprintf("%s.methods[%d]", key, j), "must be an HTTP method, got %q", m)
			}
		}
		switch {
		case r.Backend == "":
			bad(key+".backend", "is required")
		case !backends[r.Backend]:
			bad(key+".backend", "unknown backend %q", r.Backend)
		}
		brokerKey := map[string]string{"kafka": "broker.kafka.max_message_bytes", "rabbitmq": "broker.rabbitmq.max_message_bytes"}[c.Broker.Kind]
		switch limit := c.MaxMessageBytes(); {
		case r.MaxBody < 0:
			bad(key+".max_body", "must be > 0")
		case int64(r.MaxBody)+broker.Overhead > limit && brokerKey != "":
			bad(key+".max_body", "%s does not fit in a message of %s, the most %s lets the broker take with sluice's %s of headers; lower max_body or raise %s",
				humanSize(int64(r.MaxBody)), humanSize(limit), brokerKey, humanSize(broker.Overhead), brokerKey)
		case int64(r.MaxBody)+broker.Overhead > limit:
			bad(key+".max_body", "%s does not fit in a message of the embedded broker, which carries at most %s with sluice's %s of headers",
				humanSize(int64(r.MaxBody)), humanSize(limit), humanSize(broker.Overhead))
		}
		if r.TTL < 0 {
			bad(key+".ttl", "must be > 0")
		}
		if r.Schema != "" {
			if _, err := schemas.Compile(c.Path(r.Schema)); err != nil {
				bad(key+".schema", "%q: %v", r.Schema, err)
			}
		}
		c.validatePolicies(key, r, clients, bad)
	}
	return errors.Join(errs...)
}
