package main

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-gw/sluice/internal/wait"
)

// kfakeProc runs kfake as its own process on port with data in dir.
func kfakeProc(t *testing.T, port int, dir string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(buildOnce(t, "./testdata/kfake"), "-port", fmt.Sprint(port), "-dir", dir)
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
		t.Fatalf("kfake did not start: %v", err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd
}

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestKafkaKilledMidStream: SIGKILL of the Kafka process mid-stream: submits
// get 503 while it is down, delivery resumes by itself after it is back,
// and every id that got a 202 succeeds.
func TestKafkaKilledMidStream(t *testing.T) {
	integration(t)
	t.Parallel()
	if testing.Short() || os.Getenv("KAFKA_BROKERS") != "" {
		t.Skip("runs its own kfake process")
	}
	port, kdir := freePort(t), t.TempDir()
	k := kfakeProc(t, port, kdir)
	be := newBackend(t, nil)
	dir := t.TempDir()
	cfg := writeConfig(t, dir, kafkaCfg(fmt.Sprintf("127.0.0.1:%d", port), "fault.")+`
log: { level: info }
publish_timeout: 2s
routes: [{ name: r, path: /r, backend: b }]
backends:
`+backendCfg("b", be.URL, "    rate: 200\n    concurrency: 8\n"))
	p := startProc(t, cfg)

	st := startStream(t, p.base, 3000)
	st.waitFor(t, 300, "start")
	_ = k.Process.Signal(syscall.SIGKILL)
	_ = k.Wait()
	before := st.count()
	// Kafka is away: submits get 503 once the gateway notices, and (next to
	// none) are accepted for as long as it stays away: watched for 2 s.
	wait.For(t, 30*time.Second, "a 503 while Kafka is down", func() bool { return st.n503.Load() > 0 })
	wait.Never(t, 2*time.Second, "more than 50 submits accepted while Kafka was down", func() bool { return st.count()-before > 50 })
	during := st.count() - before
	kfakeProc(t, port, kdir)
	st.waitFor(t, st.count()+100, "Kafka came back")
	ids := st.end()
	t.Logf("%d accepted in all, %d accepted while Kafka was down, %d answered 503", len(ids), during, st.n503.Load())
	if st.n503.Load() == 0 {
		t.Fatal("no 503 while Kafka was down")
	}
	if during > 50 {
		t.Fatalf("%d accepted while Kafka was down", during)
	}
	awaitAll(t, p.base, ids, 120*time.Second)
}

// TestStartedBeforeKafka: sluice starts while Kafka is not there yet,
// answers 503 with Retry-After, and recovers by itself when Kafka comes up.
func TestStartedBeforeKafka(t *testing.T) {
	integration(t)
	t.Parallel()
	if testing.Short() || os.Getenv("KAFKA_BROKERS") != "" {
		t.Skip("runs its own kfake process")
	}
	port := freePort(t)
	be := newBackend(t, nil)
	cfg := writeConfig(t, t.TempDir(), kafkaCfg(fmt.Sprintf("127.0.0.1:%d", port), "late.")+`
log: { level: info }
publish_timeout: 1s
routes: [{ name: r, path: /r, backend: b }]
backends:
`+backendCfg("b", be.URL, ""))
	p := startProc(t, cfg)
	resp, err := http.Post(p.base+"/r", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("without Kafka: %d, Retry-After %q; want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	kfakeProc(t, port, t.TempDir())
	var id string
	deadline := time.Now().Add(60 * time.Second)
	for id == "" {
		resp, err := http.Post(p.base+"/r", "text/plain", strings.NewReader("x"))
		if err == nil {
			var a accepted
			_ = jsonDecode(resp, &a)
			if resp.StatusCode == 202 {
				id = a.ID
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no 202 within 60s of Kafka coming up")
		}
		time.Sleep(200 * time.Millisecond)
	}
	awaitAll(t, p.base, []string{id}, 60*time.Second)
}
