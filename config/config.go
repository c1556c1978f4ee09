package config

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/sluice-gw/sluice/broker"
	"gopkg.in/yaml.v3"
)

// Config is the whole sluice configuration file. Zero values mean the defaults
// documented on each field; ApplyDefaults fills them in.
type Config struct {
	Listen      string `yaml:"listen"`       // default ":8080"
	AdminListen string `yaml:"admin_listen"` // default "127.0.0.1:9090"
	AdminToken  string `yaml:"admin_token"`  // empty: admin API open; $SLUICE_ADMIN_TOKEN overrides
	// AdminPprof serves Go's profiles under /debug/pprof/ on the admin port.
	AdminPprof      bool     `yaml:"admin_pprof"`
	ShutdownTimeout Duration `yaml:"shutdown_timeout"` // default 15s
	Ack             string   `yaml:"ack"`              // durable (default) | fast
	// MaxInflight caps the requests being written to the broker at once; past it
	// ingress answers 503 at once instead of queueing in memory. Default 4096.
	MaxInflight int `yaml:"max_inflight"`
	// PublishTimeout bounds how long a submit waits for the broker; at most
	// half of ShutdownTimeout. Default 5s, or half of ShutdownTimeout when
	// that is less.
	PublishTimeout Duration `yaml:"publish_timeout"`
	// MaxConnections caps open client connections; past it a new connection
	// gets 503 with Retry-After and is closed. Default 10000.
	MaxConnections int `yaml:"max_connections"`
	// MaxConnectionsPerIP caps open connections from one client address,
	// so one client cannot take every slot; 0 (the default) is no cap —
	// behind a load balancer every connection comes from its address.
	MaxConnectionsPerIP int `yaml:"max_connections_per_ip"`
	// MaxLongPolls caps polls waiting with ?wait= at once; past it, 503
	// with Retry-After. Default 4096.
	MaxLongPolls int `yaml:"max_long_polls"`
	// GroupCommit packs requests that arrive together into one broker
	// write.
	GroupCommit GroupCommit `yaml:"group_commit"`
	Log         Log         `yaml:"log"`

	// Metrics serves GET /metrics (Prometheus) on the admin port and
	// records attempt durations. Default true; false: /metrics answers 404
	// and nothing is recorded per delivery for it.
	Metrics *bool `yaml:"metrics"`

	Broker  Broker  `yaml:"broker"`
	Results Results `yaml:"results"`
	// Auth, when present, makes every route and poll need credentials.
	Auth     *Auth     `yaml:"auth"`
	Routes   []Route   `yaml:"routes"`
	Backends []Backend `yaml:"backends"`
	// Tracing, when present, exports OpenTelemetry spans (package tracing).
	Tracing *Tracing `yaml:"tracing"`

	// Dir is the folder of the config file; relative paths resolve against it.
	Dir string `yaml:"-"`
	// zeros holds the key paths the file sets to 0, so that Validate can
	// refuse a 0 written out where 0 would otherwise mean "the default".
	zeros map[string]bool
}

// Auth says who may send and poll: API keys, JWTs, or both. A request
// names its client with X-API-Key: <key> or Authorization: Bearer <key or
// JWT>.
type Auth struct {
	APIKeys []APIKey `yaml:"api_keys"`
	JWT     *JWT     `yaml:"jwt"`
}

// APIKey is one client's key, given as is or as its SHA-256 (hex), so
// the config file need not hold the secret.
type APIKey struct {
	Client    string `yaml:"client"`
	Key       string `yaml:"key"`
	KeySHA256 string `yaml:"key_sha256"`
}

// JWT checks bearer tokens: HS256 with a shared secret, or RS256/ES256
// (and the other RSA, ECDSA and EdDSA algorithms) with the keys of a JWKS
// file or URL. Exactly one key source.
type JWT struct {
	HS256Secret string `yaml:"hs256_secret"`
	JWKSFile    string `yaml:"jwks_file"`
	JWKSURL     string `yaml:"jwks_url"`
	Issuer      string `yaml:"issuer"`   // checked when set
	Audience    string `yaml:"audience"` // checked when set
	// ClientClaim names the claim that names the client. Default sub.
	ClientClaim string `yaml:"client_claim"`
	// JWKSRefresh is how often the JWKS URL is fetched again. Default 1h;
	// a token with an unknown kid fetches it at once, at most once per
	// JWKSMinRefresh.
	JWKSRefresh Duration `yaml:"jwks_refresh"`
	// JWKSMinRefresh bounds the fetches an unknown kid causes. Default 10s.
	JWKSMinRefresh Duration `yaml:"jwks_min_refresh"`
	// Leeway is the clock skew allowed on exp and nbf. Default 30s.
	Leeway *Duration `yaml:"leeway"`
}

// RouteAck shapes a route's answer to an accepted request.
type RouteAck struct {
	// Status is 200, 201 or 202 (the default): for clients that accept
	// only one code. Body and headers are the same.
	Status int `yaml:"status"`
}

// RateLimit is a per-client budget on a route: rate requests per second
// with bursts of burst.
type RateLimit struct {
	Rate  float64 `yaml:"rate"`
	Burst int     `yaml:"burst"` // default max(1, rate)
}

// CORS lets browser apps on origins call a route.
type CORS struct {
	Origins []string `yaml:"origins"` // "*" allows any (then credentials must be false)
	Headers []string `yaml:"headers"` // request headers allowed; default Content-Type, Idempotency-Key, Authorization, X-API-Key
	MaxAge  Duration `yaml:"max_age"` // how long a preflight is cached; default 10m
	// Credentials sends Access-Control-Allow-Credentials: true, so
	// browsers send cookies and HTTP auth along.
	Credentials bool `yaml:"credentials"`
}

// GroupCommit tunes group commit: requests to one backend that arrive
// while a write is under way share the next write, one broker message
// that workers unpack. An idle gateway never waits: a request arriving
// with fewer than Writes under way is written at once.
type GroupCommit struct {
	// MaxRequests is the most requests one broker message carries.
	// Default 64; 1 writes one message per request, in the format other
	// tools reading the topics expect (a packed message's body is not the
	// client's).
	MaxRequests int `yaml:"max_requests"`
	// MaxBytes bounds a packed message. Default 1 MiB, and never more
	// than the broker carries; a larger request goes alone.
	MaxBytes Size `yaml:"max_bytes"`
	// Writes is how many writes per backend may be under way at once.
	// Default 2.
	Writes int `yaml:"writes"`
}

// Log selects the log level and format.
type Log struct {
	Level  string `yaml:"level"`  // debug | info (default) | warn | error
	Format string `yaml:"format"` // json (default) | console
}

// Broker selects and configures the queue.
type Broker struct {
	Kind     string    `yaml:"kind"` // embedded (default) | kafka | rabbitmq
	Embedded Embedded  `yaml:"embedded"`
	Kafka    *Kafka    `yaml:"kafka"`
	RabbitMQ *RabbitMQ `yaml:"rabbitmq"`
}

// Embedded configures the in-process NATS JetStream broker.
type Embedded struct {
	Dir string `yaml:"dir"` // default ./data/queue
	// AckWait is how long a delivered message may stay unacknowledged before
	// the broker hands it out again. Default 5m.
	AckWait Duration `yaml:"ack_wait"`
	// Sync is how often the queue's files are fsync'ed: "always" (before
	// every confirm, so a 202 survives a power loss) or a duration (a 202
	// survives a crash of sluice, but a power loss can take what was
	// accepted within the last interval). Default "1s": always cost 3-6x
	// the throughput in make bench, while 100ms, 1s and 2m measured alike.
	Sync string `yaml:"sync"`
}

// SyncAlways reports whether Sync is "always"; else SyncInterval applies.
func (e Embedded) SyncAlways() bool { return e.Sync == "always" }

// SyncInterval is Sync as a duration (0 when it is "always" or invalid).
func (e Embedded) SyncInterval() time.Duration {
	d, err := time.ParseDuration(e.Sync)
	if err != nil {
		return 0
	}
	return d
}

// Kafka configures the Kafka broker. Topic settings apply to the topics
// sluice creates, and are set on its existing topics at start.
type Kafka struct {
	Brokers     []string `yaml:"brokers"`
	TopicPrefix string   `yaml:"topic_prefix"`
	Partitions  int      `yaml:"partitions"`
	// MaxMessageBytes is the largest message sluice writes and its topics'
	// max.message.bytes. Default: 4 MiB, or the largest max_body plus
	// broker.Overhead when that is more.
	MaxMessageBytes Size `yaml:"max_message_bytes"`
	// ReplicationFactor of new topics. Default min(3, brokers in the cluster).
	ReplicationFactor int `yaml:"replication_factor"`
	// MinInsyncReplicas (min.insync.replicas): a write is confirmed once
	// this many replicas have it. Default max(1, replication_factor-1).
	MinInsyncReplicas int `yaml:"min_insync_replicas"`
	// Retention (retention.ms) of request, result and delay topics: a
	// request still waiting after this long is deleted by Kafka. Default
	// 720h (30 days).
	Retention Duration `yaml:"retention"`
	// DeadLetterRetention of dead-letter topics; 0 (the default) keeps dead
	// letters until they are replayed.
	DeadLetterRetention Duration `yaml:"dead_letter_retention"`
}

// RabbitMQ configures the RabbitMQ broker.
type RabbitMQ struct {
	URL         string `yaml:"url"`
	QueuePrefix string `yaml:"queue_prefix"`
	// MaxMessageBytes is the server's max_message_size (RabbitMQ 4.x
	// default 16 MiB); larger messages are refused before they are sent.
	MaxMessageBytes Size `yaml:"max_message_bytes"`
	// DeliveryLimit is x-delivery-limit of the request queues: a message
	// handed back this many times without being settled (a crash loop;
	// also each stop or consumer timeout while it waits in a consumer's
	// prefetch) is moved to the dead-letter stream. Default 1000.
	DeliveryLimit int `yaml:"delivery_limit"`
}

// Results configures the result store.
type Results struct {
	Store    string          `yaml:"store"` // embedded (default) | redis
	Embedded ResultsEmbedded `yaml:"embedded"`
	Redis    *Redis          `yaml:"redis"`
	TTL      Duration        `yaml:"ttl"` // default 24h (resultsTTL)
	// KeepResponse says which outcomes keep the backend's response
	// (status, headers, body): always (the default), failures (failed and
	// dead-lettered ones only) or never. A succeeded request's record
	// without its response takes about 85 bytes on disk instead of about
	// 230 and more with a body.
	KeepResponse string `yaml:"keep_response"`
}

// The values of results.keep_response.
const (
	KeepAlways   = "always"
	KeepFailures = "failures"
	KeepNever    = "never"
)

// ResultsEmbedded configures the on-disk result store.
type ResultsEmbedded struct {
	Dir string `yaml:"dir"` // default ./data/results
}

// Redis configures the Redis result store.
type Redis struct {
	Addr     string `yaml:"addr"` // default 127.0.0.1:6379
	Password string `yaml:"password"`
	DB       int    `yaml:"db"`
	// KeyPrefix starts every key of the store. Zero: the store's default,
	// "sluice:" (results/redis.Options).
	KeyPrefix string `yaml:"key_prefix"`
	// MaxPending bounds accepted records waiting in memory to be written
	// while Redis is slow or away; past it, submits answer 503. Zero: the
	// store's default, 100000 (results.DefaultMaxPending).
	MaxPending int `yaml:"max_pending"`
}

// Route maps a client-facing path to a backend.
type Route struct {
	Name    string   `yaml:"name"`
	Path    string   `yaml:"path"`    // exact, or a prefix when it ends with "/"
	Methods []string `yaml:"methods"` // default [POST]
	Backend string   `yaml:"backend"`
	MaxBody Size     `yaml:"max_body"` // default 1MiB
	Schema  string   `yaml:"schema"`   // JSON Schema file for the body
	// TTL is how long this route's outcomes stay pollable after their
	// last update. Default results.ttl.
	TTL Duration `yaml:"ttl"`
	Ack RouteAck `yaml:"ack"`
	// Clients, when set, are the only clients allowed on the route.
	Clients   []string   `yaml:"clients"`
	RateLimit *RateLimit `yaml:"rate_limit"`
	CORS      *CORS      `yaml:"cors"`
	// SetHeaders are set on the request for the backend, replacing the
	// client's; ${client}, ${route} and ${request_id} expand.
	SetHeaders map[string]string `yaml:"set_headers"`
	// RemoveHeaders never reach the backend.
	RemoveHeaders []string `yaml:"remove_headers"`
	// Decompress inflates gzip (and deflate) bodies before max_body and the
	// schema apply; the backend gets the inflated body.
	Decompress bool `yaml:"decompress"`
}

// Tracing exports a span of each accept and each delivery attempt over
// OTLP/HTTP, all of a request in one trace.
type Tracing struct {
	// OTLPEndpoint is the collector's OTLP/HTTP base URL, such as
	// "http://127.0.0.1:4318"; spans go to its /v1/traces (a URL that
	// already ends in /v1/traces is used as it is). Required.
	OTLPEndpoint string `yaml:"otlp_endpoint"`
	// Sample is the share of new traces recorded, 0 to 1. Default 1. A
	// request whose client sent a traceparent follows its sampled flag.
	Sample *float64 `yaml:"sample"`
}

// Backend is one delivery target and how fast it may be driven.
type Backend struct {
	Name        string   `yaml:"name"`
	URLs        []string `yaml:"urls"`
	Rate        float64  `yaml:"rate"`        // deliveries per second; 0 = unlimited
	Burst       int      `yaml:"burst"`       // default max(1, rate/10)
	Concurrency int      `yaml:"concurrency"` // default 16
	// Adaptive finds the concurrency the backend takes, between 1 and
	// Concurrency (workers.Limiter: AIMD on back pressure and latency).
	Adaptive   bool     `yaml:"adaptive"`
	MaxBacklog int64    `yaml:"max_backlog"` // 0 = unbounded
	Timeout    Duration `yaml:"timeout"`     // default 10s
	Retry      Retry    `yaml:"retry"`
	Breaker    Breaker  `yaml:"breaker"`
}

// Retry says when and how often a delivery is tried again.
type Retry struct {
	MaxAttempts    int      `yaml:"max_attempts"`    // default 5
	InitialBackoff Duration `yaml:"initial_backoff"` // default 200ms
	MaxBackoff     Duration `yaml:"max_backoff"`     // default 30s
	OnStatus       []int    `yaml:"on_status"`       // default 408,425,429,500,502,503,504
}

// Breaker pauses deliveries to a backend that keeps failing.
type Breaker struct {
	Failures *int     `yaml:"failures"` // default 20; 0 = off
	Cooldown Duration `yaml:"cooldown"` // default 5s
	// Probes are the attempts let through once the cooldown is over
	// (half-open); one success closes the breaker, a failure opens it for
	// another cooldown. Default 1.
	Probes int `yaml:"probes"`
}

// DefaultCORSHeaders are the request headers a route's CORS allows when
// cors.headers is absent.
var DefaultCORSHeaders = []string{"Content-Type", "Content-Encoding", "Idempotency-Key", "Authorization", "X-API-Key", "traceparent"}

// DefaultRetryStatuses are retried when retry.on_status is absent.
var DefaultRetryStatuses = []int{408, 425, 429, 500, 502, 503, 504}

// Duration is a time.Duration written as a Go duration string ("250ms", "1m").
type Duration time.Duration

// UnmarshalYAML reads a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("must be a duration such as \"10s\"")
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("must be a duration such as \"10s\", got %q", n.Value)
	}
	*d = Duration(v)
	return nil
}

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Size is a byte count written as a number or with a unit ("512KiB", "1MiB").
type Size int64

// UnmarshalYAML reads a byte size.
func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("must be a size such as \"1MiB\"")
	}
	v, err := humanize.ParseBytes(n.Value)
	if err != nil || v > 1<<40 {
		return fmt.Errorf("must be a size such as \"1MiB\", got %q", n.Value)
	}
	*s = Size(v)
	return nil
}

// Load reads, defaults and validates the config file at path. The returned
// error lists every problem, one per line, each naming its key.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(data, filepath.Dir(abs))
}

// Parse decodes a config document whose relative paths resolve against dir.
func Parse(data []byte, dir string) (*Config, error) {
	c := &Config{Dir: dir}
	derr := decode(data, c)
	if errors.Is(derr, errSyntax) {
		return nil, derr
	}
	if v := os.Getenv("SLUICE_ADMIN_TOKEN"); v != "" {
		c.AdminToken = v
	}
	c.ApplyDefaults()
	if err := errors.Join(derr, c.Validate()); err != nil {
		return nil, err
	}
	return c, nil
}

// Path resolves p against the config file's folder.
func (c *Config) Path(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(c.Dir, p)
}

// MetricsOn reports whether metrics is on (true unless set to false).
func (c *Config) MetricsOn() bool { return c.Metrics == nil || *c.Metrics }

// ApplyDefaults fills every unset key with its documented default.
func (c *Config) ApplyDefaults() {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.Listen, ":8080")
	def(&c.AdminListen, "127.0.0.1:9090")
	def(&c.Ack, "durable")
	def(&c.Log.Level, "info")
	def(&c.Log.Format, "json")
	def(&c.Broker.Kind, "embedded")
	def(&c.Broker.Embedded.Dir, "./data/queue")
	def(&c.Results.Store, "embedded")
	def(&c.Results.Embedded.Dir, "./data/results")
	def(&c.Results.KeepResponse, KeepAlways)
	if c.Metrics == nil {
		on := true
		c.Metrics = &on
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = Duration(15 * time.Second)
	}
	if c.PublishTimeout == 0 && c.ShutdownTimeout > 0 {
		c.PublishTimeout = min(Duration(5*time.Second), c.ShutdownTimeout/2)
	}
	if c.MaxInflight == 0 {
		c.MaxInflight = 4096
	}
	if c.MaxConnections == 0 {
		c.MaxConnections = 10000
	}
	if c.MaxLongPolls == 0 {
		c.MaxLongPolls = 4096
	}
	if c.GroupCommit.MaxRequests == 0 {
		c.GroupCommit.MaxRequests = 64
	}
	if c.GroupCommit.MaxBytes == 0 {
		c.GroupCommit.MaxBytes = 1 << 20
	}
	if c.GroupCommit.Writes == 0 {
		c.GroupCommit.Writes = 2
	}
	def(&c.Broker.Embedded.Sync, "1s")
	if c.Broker.Kind == "kafka" && c.Broker.Kafka == nil {
		c.Broker.Kafka = &Kafka{}
	}
	if k := c.Broker.Kafka; k != nil {
		if k.Brokers == nil {
			k.Brokers = []string{"127.0.0.1:9092"}
		}
		// topic_prefix and partitions: zero is the adapter's default
		// (kafka.Options). max_message_bytes is decided here: the
		// cross-check of max_body needs it, and it grows with the routes.
		if k.MaxMessageBytes == 0 {
			k.MaxMessageBytes = Size(max(kafkaMaxMessageBytes, c.maxBody()+broker.Overhead))
		}
		if k.Retention == 0 {
			k.Retention = Duration(720 * time.Hour)
		}
	}
	if c.Broker.Kind == "rabbitmq" && c.Broker.RabbitMQ == nil {
		c.Broker.RabbitMQ = &RabbitMQ{}
	}
	if r := c.Broker.RabbitMQ; r != nil {
		if r.URL == "" {
			r.URL = "amqp://guest:guest@127.0.0.1:5672/"
		}
		// queue_prefix and delivery_limit: zero is the adapter's default
		// (rabbitmq.Options). max_message_bytes is filled here for the
		// cross-check of max_body.
		if r.MaxMessageBytes == 0 {
			r.MaxMessageBytes = rabbitMQMaxMessageBytes
		}
	}
	if c.Results.Store == "redis" && c.Results.Redis == nil {
		c.Results.Redis = &Redis{}
	}
	if r := c.Results.Redis; r != nil {
		if r.Addr == "" {
			r.Addr = "127.0.0.1:6379"
		}
	}
	if c.Results.TTL == 0 {
		c.Results.TTL = Duration(resultsTTL)
	}
	if a := c.Auth; a != nil && a.JWT != nil {
		j := a.JWT
		def(&j.ClientClaim, "sub")
		if j.JWKSRefresh == 0 {
			j.JWKSRefresh = Duration(time.Hour)
		}
		if j.JWKSMinRefresh == 0 {
			j.JWKSMinRefresh = Duration(10 * time.Second)
		}
		if j.Leeway == nil {
			l := Duration(30 * time.Second)
			j.Leeway = &l
		}
	}
	if t := c.Tracing; t != nil && t.Sample == nil {
		one := 1.0
		t.Sample = &one
	}
	for i := range c.Routes {
		r := &c.Routes[i]
		if r.Ack.Status == 0 {
			r.Ack.Status = 202
		}
		if rl := r.RateLimit; rl != nil && rl.Burst == 0 {
			rl.Burst = max(1, int(math.Ceil(rl.Rate)))
		}
		if co := r.CORS; co != nil {
			if co.Headers == nil {
				co.Headers = append([]string(nil), DefaultCORSHeaders...)
			}
			if co.MaxAge == 0 {
				co.MaxAge = Duration(10 * time.Minute)
			}
		}
		if len(r.Methods) == 0 {
			r.Methods = []string{"POST"}
		}
		for j, m := range r.Methods {
			r.Methods[j] = strings.ToUpper(m)
		}
		if r.MaxBody == 0 {
			r.MaxBody = 1 << 20
		}
		if r.TTL == 0 {
			r.TTL = c.Results.TTL
		}
	}
	for i := range c.Backends {
		b := &c.Backends[i]
		if b.Burst == 0 {
			b.Burst = max(1, int(b.Rate/10))
		}
		if b.Concurrency == 0 {
			b.Concurrency = 16
		}
		if b.Timeout == 0 {
			b.Timeout = Duration(10 * time.Second)
		}
		if b.Retry.MaxAttempts == 0 {
			b.Retry.MaxAttempts = 5
		}
		if b.Retry.InitialBackoff == 0 {
			b.Retry.InitialBackoff = Duration(200 * time.Millisecond)
		}
		if b.Retry.MaxBackoff == 0 {
			b.Retry.MaxBackoff = Duration(30 * time.Second)
		}
		if b.Retry.OnStatus == nil {
			b.Retry.OnStatus = append([]int(nil), DefaultRetryStatuses...)
		}
		if b.Breaker.Failures == nil {
			n := 20
			b.Breaker.Failures = &n
		}
		if b.Breaker.Cooldown == 0 {
			b.Breaker.Cooldown = Duration(5 * time.Second)
		}
		if b.Breaker.Probes == 0 {
			b.Breaker.Probes = 1
		}
	}
}

// EmbeddedMaxMessageBytes is the largest message the embedded broker
// carries (embedded.MaxPayload).
const EmbeddedMaxMessageBytes = 64 << 20

// The adapters' default max message sizes (kafka.DefaultMaxMessageBytes,
// rabbitmq.DefaultMaxMessageBytes), which the cross-check of max_body
// needs, and the result stores' TTL. They are copies: importing the
// adapters would pull their libraries into config, and config stays apart
// from the ports; TestAdapterDefaults keeps them equal.
const (
	resultsTTL              = 24 * time.Hour
	kafkaMaxMessageBytes    = 4 << 20
	rabbitMQMaxMessageBytes = 16 << 20
)

// maxBody is the largest max_body of any route (routes default first).
func (c *Config) maxBody() int64 {
	var m int64 = 1 << 20
	for _, r := range c.Routes {
		m = max(m, int64(r.MaxBody))
	}
	return m
}

// MaxMessageBytes is the largest message the configured broker carries.
func (c *Config) MaxMessageBytes() int64 {
	switch {
	case c.Broker.Kind == "kafka" && c.Broker.Kafka != nil:
		return int64(c.Broker.Kafka.MaxMessageBytes)
	case c.Broker.Kind == "rabbitmq" && c.Broker.RabbitMQ != nil:
		return int64(c.Broker.RabbitMQ.MaxMessageBytes)
	}
	return EmbeddedMaxMessageBytes
}

// Backend returns the backend called name, or nil.
func (c *Config) Backend(name string) *Backend {
	for i := range c.Backends {
		if c.Backends[i].Name == name {
			return &c.Backends[i]
		}
	}
	return nil
}
