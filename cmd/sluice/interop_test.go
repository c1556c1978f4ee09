package main

// Real log clients sending through sluice: winston's HTTP transport (Node)
// and Python's logging.handlers.HTTPHandler. The clients are what users run,
// unmodified; the tests only listen to what they report. winston comes from
// scripts/node-clients.sh, which installs a pinned version into a cache dir
// on first use. Without node/npm/python3 these tests skip locally and fail
// under CI=true.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/internal/wait"
)

// clientMissing skips t because a client cannot be run, or fails it under
// CI=true, where every test must run.
func clientMissing(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s (CI=true: a missing client is a failure)", msg)
	}
	t.Skip(msg)
}

// winstonModules runs scripts/node-clients.sh and returns the node_modules
// dir that holds winston.
func winstonModules(t *testing.T) string {
	t.Helper()
	script, err := filepath.Abs(filepath.Join("..", "..", "scripts", "node-clients.sh"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", script)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		clientMissing(t, "winston is not available: scripts/node-clients.sh: %v: %s", err, lastLines(stderr.String(), 6))
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	dir := filepath.Join(lines[len(lines)-1], "node_modules")
	if _, err := os.Stat(filepath.Join(dir, "winston", "package.json")); err != nil {
		t.Fatalf("scripts/node-clients.sh printed %q, but: %v", stdout.String(), err)
	}
	return dir
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// runClient runs name with args (bounded by d), env added, and returns its
// stdout and stderr; it fails t when the program does not exit 0.
func runClient(t *testing.T, d time.Duration, env []string, name string, args ...string) (string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	t.Logf("%s %s: %v in %v", name, filepath.Base(args[len(args)-1]), err, time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("%s %v: %v (deadline %v)\nstdout:\n%s\nstderr:\n%s", name, args, err, d, stdout.String(), stderr.String())
	}
	return stdout.String(), stderr.String()
}

// winstonClient is what a Node service does: a logger with winston's HTTP
// transport, n messages, then logger.end() and the 'finish' event. It prints
// what winston reports (the transport's 'warn', which the logger re-emits as
// its own 'warn' with the transport) and, last, a JSON summary. The process
// exits by itself: nothing is left open.
//
// logger.end() waits until every request has its response: winston 3's
// Logger._final ends the transports while entries logged just before can
// still be in the logger's buffer, and those then fail with "write after
// end" and are lost whatever the server answers (winstonjs/winston#2219,
// seen here with 50 entries logged at once).
const winstonClient = `'use strict';
const winston = require('winston');
const env = process.env;
const n = Number(env.N), batch = env.BATCH === '1', batchCount = 8;
// Each request ends in exactly one 'logged' or 'warn' on the transport
// (http.js: res.statusCode !== 200 -> Error('Invalid HTTP Status Code: ...'),
// or the request's error); a batch is one request with the first entry's
// callback.
const requests = batch ? Math.ceil(n / batchCount) : n;
const transport = new winston.transports.Http({
  host: env.SLUICE_HOST, port: Number(env.SLUICE_PORT), path: env.SLUICE_PATH,
  batch, batchCount, batchInterval: 200,
});
const logger = winston.createLogger({ level: 'info', transports: [transport] });
let logged = 0, warned = 0, ended = false, ending = false;
logger.on('warn', (err, t) => console.error('winston warn (' + (t && t.name) + '): ' + (err && err.message)));
logger.on('error', (err, t) => {
  console.error('winston error (' + (t && t.name) + '): ' + (err && err.stack));
  process.exitCode = 1;
});
const answered = () => {
  if (logged + warned === requests && !ending) {
    ending = true;
    logger.on('finish', () => { ended = true; });
    logger.end();
  }
};
transport.on('logged', () => { logged++; answered(); });
transport.on('warn', () => { warned++; answered(); });
const watchdog = setTimeout(() => {
  console.error('timeout: ' + (logged + warned) + ' of ' + requests + ' requests answered');
  process.exit(3);
}, Number(env.DEADLINE_MS));
watchdog.unref(); // only fires if something else keeps the process alive
process.on('exit', code => {
  console.log(JSON.stringify({ sent: n, requests, logged, warned, ended }));
  if (logged + warned !== requests && code === 0) process.exitCode = 2;
});
for (let i = 0; i < n; i++) {
  logger.info('winston interop ' + env.RUN + ' #' + i, { run: env.RUN, seq: i });
}
`

type winstonSummary struct {
	Sent, Requests, Logged, Warned int
	Ended                          bool
}

func TestWinstonHTTPTransport(t *testing.T) {
	integration(t)
	t.Parallel()
	modules := winstonModules(t) // installs node and npm from Debian when it can
	if _, err := exec.LookPath("node"); err != nil {
		clientMissing(t, "node is not installed: the winston interop test needs Node.js")
	}
	dir := t.TempDir()
	prog := filepath.Join(dir, "winston_client.js")
	if err := os.WriteFile(prog, []byte(winstonClient), 0o644); err != nil {
		t.Fatal(err)
	}

	be := newBackend(t, nil)
	g := startGateway(t, `
routes:
  - { name: winston, path: /v1/winston, backend: logs, ack: { status: 200 } }
  - { name: winston202, path: /v1/winston-202, backend: logs }
backends:
`+backendCfg("logs", be.URL+"/ingest", ""))
	u, err := url.Parse(g.base)
	if err != nil {
		t.Fatal(err)
	}

	const n = 50
	for _, tc := range []struct {
		name, path string
		batch      bool
		complains  bool // winston reports each request: sluice answered 202
	}{
		{"ack200/single", "/v1/winston", false, false},
		{"ack200/batch", "/v1/winston", true, false},
		// The controls: on a default route winston complains, so the
		// checks above can fail.
		{"ack202/single", "/v1/winston-202", false, true},
		{"ack202/batch", "/v1/winston-202", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run := strings.ReplaceAll(tc.name, "/", "-") + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
			batch := "0"
			if tc.batch {
				batch = "1"
			}
			stdout, stderr := runClient(t, 60*time.Second, []string{
				"NODE_PATH=" + modules, "SLUICE_HOST=" + u.Hostname(), "SLUICE_PORT=" + u.Port(),
				"SLUICE_PATH=" + tc.path, "N=" + strconv.Itoa(n), "BATCH=" + batch, "RUN=" + run,
				"DEADLINE_MS=30000",
			}, "node", prog)
			out := stdout + stderr

			lines := strings.Split(strings.TrimSpace(stdout), "\n")
			var sum winstonSummary
			if err := json.Unmarshal([]byte(lines[len(lines)-1]), &sum); err != nil {
				t.Fatalf("no summary from the client: %v\n%s", err, out)
			}
			requests := n
			if tc.batch {
				requests = (n + 7) / 8
			}
			if sum.Sent != n || sum.Requests != requests || sum.Logged+sum.Warned != requests || !sum.Ended {
				t.Fatalf("client summary %+v, want %d requests answered and the logger ended\n%s", sum, requests, out)
			}
			complaints := strings.Count(out, "Invalid HTTP Status Code")
			if tc.complains {
				want := strings.Repeat("winston warn (http): Invalid HTTP Status Code: 202\n", requests)
				if stderr != want || sum.Warned != requests || sum.Logged != 0 {
					t.Fatalf("control: want winston to report all %d requests as \"Invalid HTTP Status Code: 202\"; summary %+v\nstderr:\n%s", requests, sum, stderr)
				}
				t.Logf("control run: winston reported %d times: %q", complaints, strings.SplitN(stderr, "\n", 2)[0])
			} else if complaints != 0 || stderr != "" || sum.Warned != 0 || sum.Logged != requests {
				t.Fatalf("winston reported problems on an ack: {status: 200} route; summary %+v\nstderr:\n%s", sum, stderr)
			}

			// Every message reaches the backend (at least once), as winston
			// sent it: an entry per request, or an array of up to 8 in batch mode.
			seen := func() map[int]int {
				got := map[int]int{}
				for _, e := range winstonEntries(t, be, run, tc.batch) {
					got[e.Seq]++
				}
				return got
			}
			wait.For(t, 30*time.Second, fmt.Sprintf("all %d messages at the backend", n), func() bool { return len(seen()) >= n })
			got := seen()
			for i := range n {
				if got[i] < 1 {
					t.Errorf("message #%d never reached the backend", i)
				}
			}
			if len(got) != n {
				t.Errorf("backend got %d distinct messages, want %d: %v", len(got), n, got)
			}
			if dup := sumValues(got) - n; dup > 0 {
				t.Logf("%d messages delivered more than once (at-least-once)", dup)
			}
		})
	}
}

// winstonEntry is one log entry as winston's HTTP transport sends it with
// the default json format: level, message and the metadata, nothing else.
type winstonEntry struct {
	Level   string `json:"level"`
	Message string `json:"message"`
	Run     string `json:"run"`
	Seq     int    `json:"seq"`
}

// winstonEntries returns the entries of run that reached be, checking each
// request's shape: one object, or (batch) a JSON array of objects.
func winstonEntries(t *testing.T, be *backend, run string, batch bool) []winstonEntry {
	t.Helper()
	be.mu.Lock()
	hits := slices.Clone(be.hits)
	be.mu.Unlock()
	var out []winstonEntry
	for _, h := range hits {
		if !strings.Contains(h.Body, run) {
			continue
		}
		if h.Method != "POST" || h.Path != "/ingest" || h.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("backend request %s %s Content-Type %q, want POST /ingest application/json", h.Method, h.Path, h.Header.Get("Content-Type"))
		}
		var raw []map[string]any
		if batch {
			if err := json.Unmarshal([]byte(h.Body), &raw); err != nil || len(raw) == 0 || len(raw) > 8 {
				t.Fatalf("batch body is not a JSON array of 1-8 entries (%v): %s", err, h.Body)
			}
		} else {
			var one map[string]any
			if err := json.Unmarshal([]byte(h.Body), &one); err != nil {
				t.Fatalf("body is not one JSON object (%v): %s", err, h.Body)
			}
			raw = append(raw, one)
		}
		for _, m := range raw {
			keys := make([]string, 0, len(m))
			for k := range m {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			if !slices.Equal(keys, []string{"level", "message", "run", "seq"}) {
				t.Fatalf("entry keys %v, want level, message, run, seq: %s", keys, h.Body)
			}
			b, _ := json.Marshal(m)
			var e winstonEntry
			if err := json.Unmarshal(b, &e); err != nil {
				t.Fatalf("entry %s: %v", b, err)
			}
			if e.Level != "info" || e.Run != run || e.Message != fmt.Sprintf("winston interop %s #%d", run, e.Seq) {
				t.Fatalf("entry %+v is not what the client logged", e)
			}
			out = append(out, e)
		}
	}
	return out
}

func sumValues(m map[int]int) int {
	s := 0
	for _, v := range m {
		s += v
	}
	return s
}

// pythonClient logs n records with the standard library's HTTPHandler,
// which POSTs each record's attributes form-encoded and ignores the status.
const pythonClient = `import logging, logging.handlers, os

host, path, run, n = os.environ["SLUICE_HOSTPORT"], os.environ["SLUICE_PATH"], os.environ["RUN"], int(os.environ["N"])
log = logging.getLogger("sluice.interop")
log.propagate = False
log.setLevel(logging.INFO)
log.addHandler(logging.handlers.HTTPHandler(host, path, method="POST"))
for i in range(n):
    level = logging.INFO if i % 2 == 0 else logging.WARNING
    log.log(level, "python interop %s #%d" % (run, i), extra={"run": run, "seq": i})
logging.shutdown()
print("sent", n)
`

func TestPythonHTTPHandler(t *testing.T) {
	integration(t)
	t.Parallel()
	python, err := exec.LookPath("python3")
	if err != nil {
		clientMissing(t, "python3 is not installed: the Python HTTPHandler interop test needs it")
	}
	prog := filepath.Join(t.TempDir(), "python_client.py")
	if err := os.WriteFile(prog, []byte(pythonClient), 0o644); err != nil {
		t.Fatal(err)
	}
	be := newBackend(t, nil)
	// No schema: the form-encoded body is taken as it is. A JSON schema
	// route answers it 400, which HTTPHandler ignores.
	g := startGateway(t, `
routes:
  - { name: pylog, path: /v1/pylog, backend: logs }
  - { name: pylog-schema, path: /v1/pylog-schema, backend: logs, schema: `+schemaPath(t)+` }
backends:
`+backendCfg("logs", be.URL+"/ingest", ""))

	const n = 40
	run := "py-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	// -I: isolated from PYTHON* variables and user site packages.
	stdout, stderr := runClient(t, 60*time.Second, []string{
		"SLUICE_HOSTPORT=" + strings.TrimPrefix(g.base, "http://"), "SLUICE_PATH=/v1/pylog",
		"RUN=" + run, "N=" + strconv.Itoa(n),
	}, python, "-I", prog)
	if stderr != "" || strings.TrimSpace(stdout) != fmt.Sprintf("sent %d", n) {
		t.Fatalf("python client: stdout %q, stderr:\n%s", stdout, stderr)
	}

	// On the schema route every record is refused and the client does not
	// notice: it must be a schema-less route.
	stdout, stderr = runClient(t, 60*time.Second, []string{
		"SLUICE_HOSTPORT=" + strings.TrimPrefix(g.base, "http://"), "SLUICE_PATH=/v1/pylog-schema",
		"RUN=" + run + "-schema", "N=2",
	}, python, "-I", prog)
	if stderr != "" || strings.TrimSpace(stdout) != "sent 2" {
		t.Fatalf("python client on the schema route: stdout %q, stderr:\n%s", stdout, stderr)
	}
	if resp, body := do(t, "POST", g.base+"/v1/pylog-schema", "msg=x&levelname=INFO",
		map[string]string{"Content-Type": "application/x-www-form-urlencoded"}); resp.StatusCode != 400 {
		t.Fatalf("form body on the schema route: %d %s, want 400", resp.StatusCode, body)
	}

	records := func() map[int]url.Values {
		be.mu.Lock()
		hits := slices.Clone(be.hits)
		be.mu.Unlock()
		got := map[int]url.Values{}
		for _, h := range hits {
			if h.Method != "POST" || h.Path != "/ingest" || h.Header.Get("Content-Type") != "application/x-www-form-urlencoded" {
				t.Fatalf("backend request %s %s Content-Type %q, want POST /ingest application/x-www-form-urlencoded", h.Method, h.Path, h.Header.Get("Content-Type"))
			}
			v, err := url.ParseQuery(h.Body)
			if err != nil {
				t.Fatalf("body is not form-encoded (%v): %q", err, h.Body)
			}
			if v.Get("run") != run {
				continue
			}
			seq, err := strconv.Atoi(v.Get("seq"))
			if err != nil {
				t.Fatalf("record without seq: %v", v)
			}
			got[seq] = v
		}
		return got
	}
	wait.For(t, 30*time.Second, fmt.Sprintf("all %d records at the backend", n), func() bool { return len(records()) >= n })
	got := records()
	if len(got) != n {
		t.Fatalf("backend got %d distinct records, want %d", len(got), n)
	}
	be.mu.Lock()
	for _, h := range be.hits {
		if strings.Contains(h.Body, run+"-schema") {
			t.Errorf("a record sent to the schema route reached the backend: %q", h.Body)
		}
	}
	be.mu.Unlock()
	for i := range n {
		v := got[i]
		level, levelno := "INFO", "20"
		if i%2 == 1 {
			level, levelno = "WARNING", "30"
		}
		if v.Get("msg") != fmt.Sprintf("python interop %s #%d", run, i) || v.Get("levelname") != level ||
			v.Get("levelno") != levelno || v.Get("name") != "sluice.interop" || v.Get("args") != "()" ||
			v.Get("filename") != "python_client.py" || v.Get("created") == "" {
			t.Errorf("record #%d arrived as %v", i, v)
		}
	}
}
