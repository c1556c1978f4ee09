package main

// The dashboard in a real browser: headless Chromium (Debian's package;
// scripts/services.sh installs it) driven with chromedp. Without Chromium
// the test skips locally and fails under CI=true.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
)

// chromiumPath finds a Chromium to drive, or skips t (fails it under
// CI=true).
func chromiumPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("SLUICE_CHROMIUM"); p != "" {
		if _, err := exec.LookPath(p); err != nil {
			clientMissing(t, "SLUICE_CHROMIUM=%s: %v", p, err)
		}
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	clientMissing(t, "no Chromium to drive the dashboard test: apt-get install chromium (scripts/services.sh does), or set SLUICE_CHROMIUM")
	return ""
}

// artifactDir is where a test leaves files for a person to look at:
// $SLUICE_ARTIFACTS, else the test's temp dir.
func artifactDir(t *testing.T) string {
	if d := os.Getenv("SLUICE_ARTIFACTS"); d != "" {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	return t.TempDir()
}

// TestDashboard: with admin_token set and two backends, the page asks for
// the token, then shows both backends' cards and charts, the dead letter
// and the metering; a rate set through the page's control is what the API
// then reports, and so are a pause and a replay. The page calls no host but sluice's admin port and writes
// no error to the console, in the light scheme and the dark one.
func TestDashboard(t *testing.T) {
	integration(t)
	chrome := chromiumPath(t)
	start := time.Now()

	// Everything the browser does is bounded by ctx.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	alpha := newBackend(t, nil)
	beta := newBackend(t, func(h hit, n int) (int, map[string]string, string) {
		if strings.Contains(h.Body, "doomed") || n == 1 {
			return 503, nil, `{"error":"busy"}` // a retry each, and one dead letter
		}
		return 200, nil, `{"ok":true}`
	})
	const token = "dash-s3cret"
	g := startGateway(t, `
admin_token: `+token+`
routes:
  - {name: ra, path: /a, backend: alpha}
  - {name: rb, path: /b, backend: beta}
backends:
`+backendCfg("alpha", alpha.URL, "    rate: 50\n")+
		backendCfg("beta", beta.URL, "    retry: {max_attempts: 2, initial_backoff: 10ms, max_backoff: 20ms}\n"))

	var ids []string
	for i := range 6 {
		ids = append(ids, g.submit("/a", fmt.Sprintf(`{"i":%d}`, i), nil).ID, g.submit("/b", fmt.Sprintf(`{"i":%d}`, i), nil).ID)
	}
	ids = append(ids, g.submit("/b", `{"doomed":true}`, nil).ID)
	for _, id := range ids {
		g.await(id, 10*time.Second)
	}
	// The dead letter is listed before the page opens (it lists them
	// every 10 s).
	doomed := ids[len(ids)-1]
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		_, body := do(t, "GET", g.admin+"/admin/dead-letters?backend=beta", "", map[string]string{"Authorization": "Bearer " + token})
		if strings.Contains(string(body), doomed) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the dead letter %s is not listed: %s", doomed, body)
		}
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chrome),
		chromedp.NoSandbox, // root in containers and CI
		chromedp.WindowSize(1440, 1100),
		chromedp.UserDataDir(t.TempDir()),
		// Belt and braces: whatever the browser itself might try, no
		// name resolves but the loopback address the test uses.
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-domain-reliability", true),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	defer cancelAlloc()
	tab, cancelTab := chromedp.NewContext(allocCtx)
	defer cancelTab()
	if err := chromedp.Do(tab); err != nil { // starts the browser on about:blank
		t.Fatalf("start Chromium %s: %v", chrome, err)
	}

	// Subscribe before the page loads: every console message and every
	// request the page makes.
	var mu sync.Mutex
	var consoleErrs, requests []string
	console := chromedp.Console(tab)
	sent := chromedp.Events(tab, network.RequestWillBeSent)
	go func() {
		for m, err := range console {
			if err != nil {
				return
			}
			switch m.Type {
			case chromedp.ConsoleError, chromedp.ConsoleException:
				mu.Lock()
				consoleErrs = append(consoleErrs, fmt.Sprintf("%s (%s:%d)", m, m.URL, m.Line+1))
				mu.Unlock()
			case chromedp.ConsoleWarning:
				t.Logf("console %s (%s:%d)", m, m.URL, m.Line+1)
			}
		}
	}()
	go func() {
		for ev, err := range sent {
			if err != nil {
				return
			}
			mu.Lock()
			requests = append(requests, ev.Request.URL)
			mu.Unlock()
		}
	}()

	step := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(tab, actions...); err != nil {
			shot, _ := chromedp.Run(tab, chromedp.CaptureScreenshot())
			path := filepath.Join(artifactDir(t), "dashboard-failed.png")
			_ = os.WriteFile(path, shot, 0o644)
			t.Fatalf("%s: %v (screenshot %s)", what, err, path)
		}
	}
	card := func(name string) string { return fmt.Sprintf(`article.backend[data-backend=%q]`, name) }

	// The page is served without the token and asks for it.
	step("open the page and sign in",
		chromedp.Navigate(g.admin+"/"),
		chromedp.WaitVisible(chromedp.CSS("#login-form")),
		chromedp.SendKeys(chromedp.CSS("#token"), token),
		chromedp.Click(chromedp.CSS("#login-form button[type=submit]")),
	)
	// Both backends, each with its four charts, figures from the history,
	// the dead letter and the metering table.
	step("see both backends",
		chromedp.WaitVisible(chromedp.CSS(card("alpha")+` .chart[data-chart="throughput"] canvas`)),
		chromedp.WaitVisible(chromedp.CSS(card("beta")+` .chart[data-chart="concurrency"] canvas`)),
		chromedp.Poll[chromedp.Void](`document.querySelectorAll('article.backend .uplot').length === 8 &&
			!document.querySelector('`+card("alpha")+` [data-kpi="delivered"]').textContent.startsWith('—') &&
			document.querySelector('`+card("beta")+` [data-kpi="rate"]').textContent === 'unlimited'`,
			chromedp.WithPollingTimeout(10*time.Second)),
		chromedp.Poll[chromedp.Void](`Array.from(document.querySelectorAll('#dl-rows td.id')).some(td => td.textContent === '`+doomed+`')`,
			chromedp.WithPollingTimeout(10*time.Second)),
		chromedp.Poll[chromedp.Void](`document.querySelectorAll('#client-rows tr').length === 2`,
			chromedp.WithPollingTimeout(10*time.Second)),
	)

	// Set alpha's rate through its control: the page's PATCH, and what the
	// API then reports.
	rate := card("alpha") + ` input[name="rate"]`
	step("set alpha's rate to 7",
		// Focused and emptied as a person would before typing; a focused
		// form is not refilled by the page's refresh.
		chromedp.Evaluate[chromedp.Void](`(e => { e.focus(); e.value = ''; })(document.querySelector('`+rate+`'))`),
		chromedp.SendKeys(chromedp.CSS(rate), "7"),
		chromedp.Click(chromedp.CSS(card("alpha")+` button.apply`)),
		chromedp.Poll[chromedp.Void](`document.querySelector('`+card("alpha")+` .controls .answer').textContent.startsWith('Applied: rate 7/s')`,
			chromedp.WithPollingTimeout(5*time.Second)),
	)
	resp, body := do(t, "GET", g.admin+"/admin/backends/alpha", "", map[string]string{"Authorization": "Bearer " + token})
	var got struct{ Rate float64 }
	if resp.StatusCode != 200 || json.Unmarshal(body, &got) != nil || got.Rate != 7 {
		t.Fatalf("GET /admin/backends/alpha after the page set rate 7: %d %s", resp.StatusCode, body)
	}
	step("see the new rate on the card",
		chromedp.Poll[chromedp.Void](`document.querySelector('`+card("alpha")+` [data-kpi="rate"]').textContent === '7/s'`,
			chromedp.WithPollingTimeout(5*time.Second)),
	)

	// One request's attempts, once the admin API can look requests up
	// (GET /admin/requests/<id>); a build without it skips this part. Before the
	// replay: its two attempts, both answered 503.
	if resp, _ := do(t, "GET", g.admin+"/admin/requests/"+doomed, "", map[string]string{"Authorization": "Bearer " + token}); resp.StatusCode == 200 {
		step("see the dead letter's attempts",
			chromedp.Click(chromedp.CSS(`#dl-rows tr:first-child button.lookup`)),
			chromedp.Poll[chromedp.Void](`document.querySelectorAll('#lookup-attempts tr').length === 2 &&
				Array.from(document.querySelectorAll('#lookup-attempts tr td:nth-child(3)')).every(td => td.textContent === '503')`,
				chromedp.WithPollingTimeout(5*time.Second)),
		)
	} else {
		t.Logf("GET /admin/requests/<id> answers %d in this build: the attempt log is not checked", resp.StatusCode)
	}

	// Pause and resume beta, and replay its dead letter, from the page.
	answer := func(sel, prefix string) chromedp.Action[chromedp.Void] {
		return chromedp.Poll[chromedp.Void](`document.querySelector('`+sel+`').textContent.startsWith('`+prefix+`')`,
			chromedp.WithPollingTimeout(5*time.Second))
	}
	step("pause beta",
		chromedp.Click(chromedp.CSS(card("beta")+` button.pause`)),
		answer(card("beta")+` .controls .answer`, "Paused"),
	)
	if _, body := do(t, "GET", g.admin+"/admin/backends/beta", "", map[string]string{"Authorization": "Bearer " + token}); !strings.Contains(string(body), `"paused":true`) {
		t.Fatalf("beta after Pause: %s", body)
	}
	step("resume beta and replay its dead letter",
		chromedp.Click(chromedp.CSS(card("beta")+` button.pause`)),
		answer(card("beta")+` .controls .answer`, "Resumed"),
		chromedp.Click(chromedp.CSS(`#dl-rows tr:first-child button.replay`)),
		answer(`#dl-answer`, "Replayed 1 request to beta."),
	)

	// Live figures: traffic while the page watches the last minute.
	stopTraffic := make(chan struct{})
	var traffic sync.WaitGroup
	traffic.Add(1)
	go func() {
		defer traffic.Done()
		c := &http.Client{Timeout: 5 * time.Second}
		for i := 0; ; i++ {
			select {
			case <-stopTraffic:
				return
			case <-time.After(40 * time.Millisecond):
			}
			for _, p := range []string{"/a", "/b"} {
				if resp, err := c.Post(g.base+p, "application/json", strings.NewReader(fmt.Sprintf(`{"live":%d}`, i))); err == nil {
					resp.Body.Close()
				}
			}
		}
	}()
	step("see live figures over the last minute",
		chromedp.Click(chromedp.CSS(`.segmented [data-window="60"]`)),
		chromedp.Poll[chromedp.Void](`parseFloat(document.querySelector('`+card("alpha")+` [data-kpi="delivered"]').textContent) > 0 &&
			parseFloat(document.querySelector('`+card("beta")+` [data-kpi="delivered"]').textContent) > 0`,
			chromedp.WithPollingTimeout(10*time.Second)),
		chromedp.Sleep(2500*time.Millisecond), // one more point, for the picture
	)
	close(stopTraffic)
	traffic.Wait()

	dir := artifactDir(t)
	for _, scheme := range []string{"light", "dark"} {
		if _, err := chromedp.Call(tab, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: scheme}},
		}); err != nil {
			t.Fatalf("emulate %s: %v", scheme, err)
		}
		step("wait for the charts in the "+scheme+" scheme", chromedp.Sleep(300*time.Millisecond))
		shot, err := chromedp.Run(tab, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot: %v", err)
		}
		path := filepath.Join(dir, "dashboard-"+scheme+".png")
		if err := os.WriteFile(path, shot, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot (%s scheme): %s", scheme, path)
	}

	mu.Lock()
	defer mu.Unlock()
	if len(consoleErrs) > 0 {
		t.Errorf("console errors:\n%s", strings.Join(consoleErrs, "\n"))
	}
	if len(requests) < 6 {
		t.Errorf("the test saw only %d requests of the page: %v", len(requests), requests)
	}
	admin, _ := url.Parse(g.admin)
	for _, r := range requests {
		u, err := url.Parse(r)
		if err != nil || u.Hostname() != "127.0.0.1" || u.Host != admin.Host {
			t.Errorf("the page called %s: only sluice's admin port %s is allowed", r, admin.Host)
		}
	}
	t.Logf("%d requests, all to %s; the test took %v", len(requests), admin.Host, time.Since(start).Round(100*time.Millisecond))
}
