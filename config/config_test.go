package config

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/broker/embedded"
	"github.com/sluice-gw/sluice/broker/kafka"
	"github.com/sluice-gw/sluice/broker/rabbitmq"
	"github.com/sluice-gw/sluice/results"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// TestGolden checks the exact error output of config validation, one line per
// problem, against testdata/<name>.golden.
func TestGolden(t *testing.T) {
	for _, name := range []string{"bad_values", "unknown_keys", "kafka_bad", "policies_bad", "policies_more", "jwt_bad", "tracing_bad"} {
		t.Run(name, func(t *testing.T) {
			_, err := Load(filepath.Join("testdata", name+".yaml"))
			if err == nil {
				t.Fatal("config loaded without error")
			}
			got := err.Error() + "\n"
			golden := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if got != string(want) {
				t.Fatalf("errors differ from %s:\n--- got\n%s--- want\n%s", golden, got, want)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	c, err := Load("testdata/minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b := c.Backends[0]
	checks := []struct {
		name      string
		got, want any
	}{
		{"listen", c.Listen, ":8080"},
		{"admin_listen", c.AdminListen, "127.0.0.1:9090"},
		{"ack", c.Ack, "durable"},
		{"shutdown_timeout", c.ShutdownTimeout.D(), 15 * time.Second},
		{"broker.kind", c.Broker.Kind, "embedded"},
		{"results.ttl", c.Results.TTL.D(), 24 * time.Hour},
		{"results.keep_response", c.Results.KeepResponse, "always"},
		{"routes[0].ttl", c.Routes[0].TTL.D(), 24 * time.Hour},
		{"methods", strings.Join(c.Routes[0].Methods, ","), "POST"},
		{"max_body", int64(c.Routes[0].MaxBody), int64(1 << 20)},
		{"rate", b.Rate, 0.0},
		{"burst", b.Burst, 1},
		{"concurrency", b.Concurrency, 16},
		{"timeout", b.Timeout.D(), 10 * time.Second},
		{"max_attempts", b.Retry.MaxAttempts, 5},
		{"initial_backoff", b.Retry.InitialBackoff.D(), 200 * time.Millisecond},
		{"max_backoff", b.Retry.MaxBackoff.D(), 30 * time.Second},
		{"on_status", len(b.Retry.OnStatus), 7},
		{"breaker.failures", *b.Breaker.Failures, 20},
		{"breaker.cooldown", b.Breaker.Cooldown.D(), 5 * time.Second},
		{"metrics", c.MetricsOn(), true},
		{"breaker.probes", b.Breaker.Probes, 1},
		{"adaptive", b.Adaptive, false},
	}
	for _, ck := range checks {
		if ck.got != ck.want {
			t.Errorf("%s = %v, want %v", ck.name, ck.got, ck.want)
		}
	}
	if c.Path("schemas/x.json") != filepath.Join(c.Dir, "schemas/x.json") {
		t.Errorf("relative path not resolved against the config folder")
	}
}

func TestExplicitValuesKept(t *testing.T) {
	c, err := Parse([]byte(`
ack: fast
results: { ttl: 2h, keep_response: failures }
routes:
  - { name: r, path: /r/, backend: b, max_body: 512KiB, methods: [put], ttl: 10m }
  - { name: s, path: /s, backend: b }
backends:
  - name: b
    urls: ["http://127.0.0.1:1/"]
    rate: 2.5
    burst: 3
    retry: { on_status: [] }
    breaker: { failures: 0 }
`), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := c.Backends[0]
	if c.Ack != "fast" || c.Routes[0].MaxBody != 512<<10 || c.Routes[0].Methods[0] != "PUT" || c.Routes[0].TTL.D() != 10*time.Minute {
		t.Errorf("route values not kept: %+v", c.Routes[0])
	}
	if c.Routes[1].TTL.D() != 2*time.Hour || c.Results.KeepResponse != KeepFailures {
		t.Errorf("route ttl %v (want results.ttl, 2h), keep_response %q", c.Routes[1].TTL.D(), c.Results.KeepResponse)
	}
	if b.Rate != 2.5 || b.Burst != 3 || len(b.Retry.OnStatus) != 0 || *b.Breaker.Failures != 0 {
		t.Errorf("backend values not kept: %+v", b)
	}
}

// TestMetricsKey: metrics is on unless set to false; anything but a
// boolean is refused by name.
func TestMetricsKey(t *testing.T) {
	const base = "routes: [{name: r, path: /r, backend: b}]\nbackends: [{name: b, urls: [\"http://127.0.0.1:1/\"]}]\n"
	for _, c := range []struct {
		name, line string
		on         bool
		err        string
	}{
		{"absent", "", true, ""},
		{"null", "metrics:\n", true, ""},
		{"true", "metrics: true\n", true, ""},
		{"false", "metrics: false\n", false, ""},
		{"not a boolean", "metrics: sometimes\n", false, `metrics: must be a boolean, got "sometimes"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := Parse([]byte(c.line+base), t.TempDir())
			switch {
			case c.err != "":
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("got %v, want %q", err, c.err)
				}
			case err != nil:
				t.Fatal(err)
			case cfg.MetricsOn() != c.on:
				t.Fatalf("MetricsOn() = %v, want %v", cfg.MetricsOn(), c.on)
			}
		})
	}
}

func TestEmptyDocument(t *testing.T) {
	_, err := Parse([]byte(""), t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "routes: at least one route is required") {
		t.Fatalf("got %v", err)
	}
}

// TestLimitsAndExposure: what check refuses for the failure paths of a 202:
// a max_body the broker cannot carry, an admin API open to the network
// without a token, a bad sync setting, Kafka topic settings that could
// never confirm a write.
func TestLimitsAndExposure(t *testing.T) {
	t.Setenv("SLUICE_ADMIN_TOKEN", "")
	base := "routes: [{name: r, path: /r, backend: b, max_body: %s}]\nbackends: [{name: b, urls: [\"http://127.0.0.1:1/\"]}]\n"
	cases := []struct {
		name, cfg, body, want string // want: "" = valid
	}{
		{"embedded default", "", "1MiB", ""},
		{"embedded too large", "", "64MiB", "routes[0].max_body: 64 MiB does not fit"},
		{"kafka derives its limit", "broker: {kind: kafka}\n", "10MiB", ""},
		{"kafka explicit limit too small", "broker: {kind: kafka, kafka: {max_message_bytes: 1MiB}}\n", "1MiB",
			"routes[0].max_body: 1 MiB does not fit in a message of 1 MiB, the most broker.kafka.max_message_bytes"},
		{"rabbitmq 4.x default", "broker: {kind: rabbitmq}\n", "16MiB", "raise broker.rabbitmq.max_message_bytes"},
		{"rabbitmq raised", "broker: {kind: rabbitmq, rabbitmq: {max_message_bytes: 32MiB}}\n", "16MiB", ""},
		{"admin on every interface", "admin_listen: \":9090\"\n", "1MiB", "admin_listen: \":9090\" is reachable from other hosts"},
		{"admin on a public address", "admin_listen: \"10.0.0.1:9090\"\n", "1MiB", "admin_listen:"},
		{"admin on every interface with a token", "admin_listen: \":9090\"\nadmin_token: t\n", "1MiB", ""},
		{"admin on localhost", "admin_listen: \"localhost:9090\"\n", "1MiB", ""},
		{"admin on ::1", "admin_listen: \"[::1]:9090\"\n", "1MiB", ""},
		{"sync interval", "broker: {embedded: {sync: 1s}}\n", "1MiB", ""},
		{"sync nonsense", "broker: {embedded: {sync: sometimes}}\n", "1MiB", "broker.embedded.sync: must be \"always\" or a duration"},
		{"short shutdown, default publish timeout", "shutdown_timeout: 2s\n", "1MiB", ""},
		{"publish timeout over half the shutdown", "shutdown_timeout: 2s\npublish_timeout: 5s\n", "1MiB",
			"publish_timeout: must be at most half of shutdown_timeout (2s)"},
		{"min isr above rf", "broker: {kind: kafka, kafka: {replication_factor: 1, min_insync_replicas: 2}}\n", "1MiB",
			"broker.kafka.min_insync_replicas: must be <= replication_factor"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.cfg+fmt.Sprintf(base, c.body)), t.TempDir())
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("got %v, want %q", err, c.want)
			}
		})
	}
	t.Setenv("SLUICE_ADMIN_TOKEN", "from-env")
	c, err := Parse([]byte("admin_listen: \":9090\"\n"+fmt.Sprintf(base, "1MiB")), t.TempDir())
	if err != nil || c.AdminToken != "from-env" {
		t.Fatalf("$SLUICE_ADMIN_TOKEN: %v %q", err, c.AdminToken)
	}
}

func TestBrokerDefaults(t *testing.T) {
	c, err := Parse([]byte(`
broker: {kind: kafka}
routes: [{name: r, path: /r, backend: b, max_body: 6MiB}]
backends: [{name: b, urls: ["http://127.0.0.1:1/"]}]
`), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	k := c.Broker.Kafka
	if int64(k.MaxMessageBytes) != 6<<20+broker.Overhead || k.Retention.D() != 720*time.Hour || k.DeadLetterRetention != 0 {
		t.Fatalf("kafka defaults: %+v", k)
	}
	if c.Broker.Embedded.Sync != "1s" || c.MaxConnections != 10000 || c.MaxLongPolls != 4096 {
		t.Fatalf("defaults: sync %q, max_connections %d, max_long_polls %d", c.Broker.Embedded.Sync, c.MaxConnections, c.MaxLongPolls)
	}
}

// TestExplicitZero: a 0 written out where 0 would silently mean "the
// default" is refused with its key; left out, the default applies; where 0
// has a meaning of its own (rate: unlimited, breaker.failures: off) it is
// kept.
func TestExplicitZero(t *testing.T) {
	_, err := Parse([]byte(`
routes: [{name: r, path: /r, backend: b, max_body: 0}]
backends:
  - name: b
    urls: ["http://127.0.0.1:1/"]
    concurrency: 0
    retry: {max_attempts: 0}
`), t.TempDir())
	for _, want := range []string{
		"backends[0].concurrency: 0 is not a value here (must be >= 1)",
		"backends[0].retry.max_attempts: 0 is not a value here (must be >= 1; 1 means no retries)",
		"routes[0].max_body: 0 is not a value here",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("got %v, want %q", err, want)
		}
	}
	c, err := Parse([]byte(`
routes: [{name: r, path: /r, backend: b}]
backends: [{name: b, urls: ["http://127.0.0.1:1/"], rate: 0, breaker: {failures: 0}}]
`), t.TempDir())
	if err != nil || c.Backends[0].Rate != 0 || *c.Backends[0].Breaker.Failures != 0 || c.Backends[0].Concurrency != 16 {
		t.Fatalf("zeros with a meaning: %v %+v", err, c)
	}
}

// TestAdapterDefaults: the max message sizes config fills in for the
// cross-check of max_body are the adapters' own defaults.
func TestAdapterDefaults(t *testing.T) {
	if kafkaMaxMessageBytes != kafka.DefaultMaxMessageBytes || rabbitMQMaxMessageBytes != rabbitmq.DefaultMaxMessageBytes ||
		EmbeddedMaxMessageBytes != embedded.MaxPayload {
		t.Fatalf("config's copies of the adapters' defaults differ: kafka %d/%d, rabbitmq %d/%d, embedded %d/%d",
			kafkaMaxMessageBytes, kafka.DefaultMaxMessageBytes, rabbitMQMaxMessageBytes, rabbitmq.DefaultMaxMessageBytes,
			EmbeddedMaxMessageBytes, embedded.MaxPayload)
	}
	if resultsTTL != results.DefaultTTL {
		t.Fatalf("results.ttl default %s, the stores' %s", resultsTTL, results.DefaultTTL)
	}
}

// TestEmptySections: a section present with nothing in it (every line
// under it commented out) is refused for what it lacks, not ignored.
func TestEmptySections(t *testing.T) {
	base := "routes: [{ name: r, path: /r, backend: b%s }]\nbackends: [{ name: b, urls: [\"http://127.0.0.1:1/\"] }]\n%s"
	for _, tc := range []struct{ name, route, top, refused string }{
		{name: "auth false", top: "auth: false\n", refused: "auth: must be a mapping"},
		{name: "auth null", top: "auth:\n", refused: "auth: needs api_keys or jwt"},
		{name: "rate_limit null", route: ", rate_limit: null", refused: "routes[0].rate_limit.rate: must be > 0"},
		{name: "cors null", route: ", cors: ", refused: "routes[0].cors.origins: at least one origin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(fmt.Sprintf(base, tc.route, tc.top)), t.TempDir())
			if err == nil || !strings.Contains(err.Error(), tc.refused) {
				t.Fatalf("got %v, want %q", err, tc.refused)
			}
		})
	}
}

// TestAdaptiveAndProbes: backends[].adaptive is a boolean in any YAML
// spelling, and breaker.probes a whole number >= 1.
func TestAdaptiveAndProbes(t *testing.T) {
	base := "routes: [{ name: r, path: /r, backend: b }]\nbackends: [{ name: b, urls: [\"http://127.0.0.1:1/\"]%s }]\n"
	for _, tc := range []struct {
		name, backend, refused string
		adaptive               bool
		probes                 int
	}{
		{name: "adaptive on", backend: ", adaptive: true", adaptive: true, probes: 1},
		{name: "adaptive yes", backend: ", adaptive: yes", adaptive: true, probes: 1},
		{name: "adaptive off", backend: ", adaptive: off", probes: 1},
		{name: "adaptive FALSE", backend: ", adaptive: FALSE", probes: 1},
		{name: "adaptive null", backend: ", adaptive: null", probes: 1},
		{name: "adaptive not a boolean", backend: ", adaptive: sometimes", refused: "backends[0].adaptive: must be a boolean"},
		{name: "probes 3", backend: ", breaker: { probes: 3 }", probes: 3},
		{name: "probes 0", backend: ", breaker: { probes: 0 }", refused: "backends[0].breaker.probes: 0 is not a value here (must be >= 1)"},
		{name: "probes negative", backend: ", breaker: { probes: -2 }", refused: "backends[0].breaker.probes: must be >= 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(fmt.Sprintf(base, tc.backend)), t.TempDir())
			switch {
			case tc.refused == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.refused != "" && (err == nil || !strings.Contains(err.Error(), tc.refused)):
				t.Fatalf("got %v, want %q", err, tc.refused)
			case tc.refused == "":
				if b := c.Backends[0]; b.Adaptive != tc.adaptive || b.Breaker.Probes != tc.probes {
					t.Fatalf("adaptive %v probes %d, want %v %d", b.Adaptive, b.Breaker.Probes, tc.adaptive, tc.probes)
				}
			}
		})
	}
}

// TestFractionsRefused: a whole-number key given a fraction is refused,
// not cut (concurrency: 2.9 would run with 2).
func TestFractionsRefused(t *testing.T) {
	_, err := Parse([]byte("routes: [{ name: r, path: /r, backend: b }]\nbackends: [{ name: b, urls: [\"http://127.0.0.1:1/\"], concurrency: 2.9, breaker: { probes: 1.5 } }]\n"), t.TempDir())
	if err == nil || !strings.Contains(err.Error(), `backends[0].concurrency: must be a whole number, got "2.9"`) ||
		!strings.Contains(err.Error(), `backends[0].breaker.probes: must be a whole number, got "1.5"`) {
		t.Fatalf("got %v", err)
	}
}
