package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestGroupCommitKill9SkipsSettled: requests submitted together travel
// packed in a few broker messages. Killed mid-batch, sluice hands the batch
// out again on restart, and the requests whose outcome the store already
// held are not delivered again; every request is delivered.
func TestGroupCommitKill9SkipsSettled(t *testing.T) {
	integration(t)
	t.Parallel()
	eachBrokerParallel(t, allBrokers, []string{"b"}, func(t *testing.T, _, brokerCfg, _ string) {
		be := newBackend(t, nil)
		dir := t.TempDir()
		cfg := writeConfig(t, dir, brokerCfg+`
log: { level: info }
group_commit: { writes: 1 }
routes: [{ name: r, path: /r, backend: b }]
backends:
`+backendCfg("b", be.URL, "    rate: 20\n    burst: 1\n    concurrency: 2\n"))
		p := startProc(t, cfg)

		// 80 at once: the first write goes alone, the others wait for it
		// and share the next.
		const n = 80
		ids := make([]string, n)
		var wg sync.WaitGroup
		c := &http.Client{Timeout: 10 * time.Second}
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := c.Post(p.base+"/r", "application/json", strings.NewReader(fmt.Sprintf(`{"i":%d}`, i)))
				if err != nil {
					t.Error(err)
					return
				}
				defer resp.Body.Close()
				var a accepted
				_ = json.NewDecoder(resp.Body).Decode(&a)
				if resp.StatusCode != 202 {
					t.Errorf("submit %d: %d", i, resp.StatusCode)
				}
				ids[i] = a.ID
			}()
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		// Once some are delivered and recorded, kill: the rest of their
		// batch is unsettled at the broker.
		var settled []string
		deadline := time.Now().Add(30 * time.Second)
		for len(settled) < 15 && time.Now().Before(deadline) {
			time.Sleep(200 * time.Millisecond)
			settled = settled[:0]
			for _, id := range ids {
				if r := getRecord(t, p.base, id); r.Status == "succeeded" {
					settled = append(settled, id)
				}
			}
		}
		if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-p.exited
		delivered := be.count()
		t.Logf("%d of %d recorded as succeeded before the kill, %d delivered", len(settled), n, delivered)
		if len(settled) < 15 || delivered >= n {
			t.Fatalf("the kill did not land mid-stream: %d recorded, %d delivered", len(settled), delivered)
		}

		p2 := startProc(t, cfg)
		awaitAll(t, p2.base, ids, 60*time.Second)
		for _, id := range settled {
			if hits := len(be.hitsFor(id)); hits != 1 {
				t.Errorf("%s was recorded as succeeded before the kill, then delivered %d times in all", id, hits)
			}
		}
		for _, id := range ids {
			if len(be.hitsFor(id)) == 0 {
				t.Fatalf("%s succeeded but the backend never saw it", id)
			}
		}
	})
}

func getRecord(t *testing.T, base, id string) record {
	t.Helper()
	var r record
	resp, err := http.Get(base + "/v1/requests/" + id)
	if err != nil {
		return r
	}
	defer resp.Body.Close()
	_ = json.NewDecoder(resp.Body).Decode(&r)
	return r
}
