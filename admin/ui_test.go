package admin

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestDashboardAuth: with admin_token set, the page and its static files
// are served to anyone (they hold no data), and every API call, however
// its path is spelled, still needs the token.
func TestDashboardAuth(t *testing.T) {
	h, _ := testHandler(t, "s3cret")
	auth := map[string]string{"Authorization": "Bearer s3cret"}
	cases := []struct {
		name, method, path string
		hdr                map[string]string
		status             int
		ctype              string
	}{
		{"page", "GET", "/", nil, 200, "text/html; charset=utf-8"},
		{"page, HEAD", "HEAD", "/", nil, 200, "text/html; charset=utf-8"},
		{"script", "GET", "/ui/app.js", nil, 200, "text/javascript; charset=utf-8"},
		{"style", "GET", "/ui/app.css", nil, 200, "text/css; charset=utf-8"},
		{"uPlot", "GET", "/ui/vendor/uplot/uPlot.iife.min.js", nil, 200, "text/javascript; charset=utf-8"},
		{"uPlot licence", "GET", "/ui/vendor/uplot/LICENSE", nil, 200, "text/plain; charset=utf-8"},
		{"icon", "GET", "/ui/favicon.svg", nil, 200, "image/svg+xml"},
		{"healthz", "GET", "/healthz", nil, 200, "application/json"},
		{"/ui/ is no file: not public", "GET", "/ui/", nil, 401, "application/problem+json"},
		{"no listing of /ui/", "GET", "/ui/", auth, 404, "application/problem+json"},
		{"no listing of a folder", "GET", "/ui/vendor/uplot", nil, 404, "application/problem+json"},
		{"the page's template is not a file", "GET", "/ui/index.html", nil, 404, "application/problem+json"},
		{"unknown file", "GET", "/ui/nope.js", nil, 404, "application/problem+json"},
		{"backends", "GET", "/admin/backends", nil, 401, "application/problem+json"},
		{"history", "GET", "/admin/history", nil, 401, "application/problem+json"},
		{"clients", "GET", "/admin/clients", nil, 401, "application/problem+json"},
		{"dead letters", "GET", "/admin/dead-letters", nil, 401, "application/problem+json"},
		{"readyz", "GET", "/readyz", nil, 401, "application/problem+json"},
		{"an API under /ui/..", "GET", "/ui/../admin/backends", nil, 401, "application/problem+json"},
		{"an API under /ui/%2e%2e", "GET", "/ui/%2e%2e/admin/backends", nil, 401, "application/problem+json"},
		{"an API under //", "GET", "//admin/backends", nil, 401, "application/problem+json"},
		{"a PATCH of the page", "PATCH", "/", nil, 401, "application/problem+json"},
		{"a POST of a file", "POST", "/ui/app.js", nil, 401, "application/problem+json"},
		{"unknown path", "GET", "/nope", nil, 401, "application/problem+json"},
		{"backends with the token", "GET", "/admin/backends", auth, 200, "application/json"},
		{"history with the token", "GET", "/admin/history", auth, 404, "application/problem+json"}, // no History in this handler
		{"a POST of the page with the token", "POST", "/", auth, 405, "application/problem+json"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body := serve(h, c.method, c.path, "", c.hdr)
			if resp.StatusCode != c.status || resp.Header.Get("Content-Type") != c.ctype {
				t.Fatalf("%d %q, want %d %q: %.200s", resp.StatusCode, resp.Header.Get("Content-Type"), c.status, c.ctype, body)
			}
			if c.status == 200 && strings.HasPrefix(c.path, "/ui/") || c.path == "/" && c.status == 200 {
				if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "connect-src 'self'") {
					t.Fatalf("CSP %q", csp)
				}
				if resp.Header.Get("X-Content-Type-Options") != "nosniff" || resp.Header.Get("X-Frame-Options") != "DENY" {
					t.Fatalf("headers %v", resp.Header)
				}
			}
		})
	}
}

// TestDashboardPage: the page tells whether the API wants a token, and
// every file it loads is served from the binary: no other host.
func TestDashboardPage(t *testing.T) {
	for _, token := range []string{"", "s3cret"} {
		h, _ := testHandler(t, token)
		resp, page := serve(h, "GET", "/", "", nil)
		want := map[string]string{"": `data-auth="none"`, "s3cret": `data-auth="token"`}[token]
		if resp.StatusCode != 200 || !strings.Contains(page, want) || strings.Contains(page, authPlaceholder) {
			t.Fatalf("token %q: %d, want %s in the page", token, resp.StatusCode, want)
		}
		if resp.Header.Get("Cache-Control") != "no-store" {
			t.Fatalf("page Cache-Control %q", resp.Header.Get("Cache-Control"))
		}
		if strings.Contains(page, "s3cret") {
			t.Fatal("the page holds the token")
		}
	}
	h, _ := testHandler(t, "")
	_, page := serve(h, "GET", "/", "", nil)
	refs := regexp.MustCompile(`(?:src|href)="([^"#]+)"`).FindAllStringSubmatch(page, -1)
	if len(refs) < 4 {
		t.Fatalf("the page loads %d files", len(refs))
	}
	for _, r := range refs {
		if !strings.HasPrefix(r[1], "/ui/") {
			t.Fatalf("the page loads %q, not a file of its own", r[1])
		}
		if resp, _ := serve(h, "GET", r[1], "", nil); resp.StatusCode != 200 {
			t.Fatalf("the page loads %s: %d", r[1], resp.StatusCode)
		}
	}
	for path, a := range uiAssets {
		if strings.HasSuffix(path, ".js") || strings.HasSuffix(path, ".css") || strings.HasSuffix(path, ".html") {
			if m := regexp.MustCompile(`(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}/`).Find(a.body); m != nil &&
				!strings.Contains(path, "vendor/") {
				t.Fatalf("%s names another host: %s", path, m)
			}
		}
	}

	// A file asked for again with its ETag is not sent again.
	resp, _ := serve(h, "GET", "/ui/app.js", "", nil)
	etag := resp.Header.Get("ETag")
	if resp, _ := serve(h, "GET", "/ui/app.js", "", map[string]string{"If-None-Match": etag}); etag == "" || resp.StatusCode != 304 {
		t.Fatalf("ETag %q: %d", etag, resp.StatusCode)
	}
}

// TestCrossSite: a change sent by another site's page (a form POST, a
// fetch) is refused even without a token; the dashboard's own calls and
// programs that send no Origin are not.
func TestCrossSite(t *testing.T) {
	h, _ := testHandler(t, "")
	cases := []struct {
		name, method, path, body string
		hdr                      map[string]string
		status                   int
	}{
		{"another origin", "PATCH", "/admin/backends/logs", `{"rate":3}`, map[string]string{"Origin": "https://evil.example"}, 403},
		{"an opaque origin", "POST", "/admin/dead-letters/replay", `{"backend":"logs"}`, map[string]string{"Origin": "null"}, 403},
		{"cross-site without Origin", "POST", "/admin/dead-letters/replay", `{"backend":"logs"}`, map[string]string{"Sec-Fetch-Site": "cross-site"}, 403},
		{"a DELETE of the tuning from another origin", "DELETE", "/admin/backends/logs/tuning", "", map[string]string{"Origin": "https://evil.example"}, 403},
		{"another port of the host", "PATCH", "/admin/backends/logs", `{"rate":3}`, map[string]string{"Origin": "http://127.0.0.1:8080"}, 403},
		{"the dashboard", "PATCH", "/admin/backends/logs", `{"rate":3}`, map[string]string{"Origin": "http://127.0.0.1:9090"}, 200},
		{"the dashboard on localhost", "PATCH", "/admin/backends/logs", `{"rate":3}`, map[string]string{"Origin": "http://localhost:9090", "Host": "localhost:9090"}, 200},
		// DNS rebinding: a page whose name now points at 127.0.0.1 sends
		// its own name as Host and Origin alike.
		{"a rebound name", "PATCH", "/admin/backends/logs", `{"rate":3}`, map[string]string{"Origin": "http://rebind.evil.example:9090", "Host": "rebind.evil.example:9090"}, 421},
		{"a rebound name reading", "GET", "/admin/clients", "", map[string]string{"Host": "rebind.evil.example:9090"}, 421},
		{"healthz by any name", "GET", "/healthz", "", map[string]string{"Host": "sluice.internal:9090"}, 200},
		{"curl", "PATCH", "/admin/backends/logs", `{"rate":4}`, nil, 200},
		{"a read from elsewhere", "GET", "/admin/backends", "", map[string]string{"Origin": "https://evil.example"}, 200},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body := serve(h, c.method, c.path, c.body, c.hdr)
			if resp.StatusCode != c.status {
				t.Fatalf("%d, want %d: %s", resp.StatusCode, c.status, body)
			}
			if c.status == 403 && !strings.Contains(body, "/problems/forbidden") {
				t.Fatalf("403 body %s", body)
			}
		})
	}
}

// TestVendoredUPlot: the vendored files are the ones the folder's
// README names, byte for byte.
func TestVendoredUPlot(t *testing.T) {
	readme, err := os.ReadFile("ui/vendor/uplot/README.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := regexp.MustCompile("\\| `([^`]+)` \\| `[^`]+` \\| `([0-9a-f]{64})` \\|").FindAllStringSubmatch(string(readme), -1)
	if len(rows) != 2 {
		t.Fatalf("README names %d sums", len(rows))
	}
	for _, r := range rows {
		b, err := os.ReadFile("ui/vendor/uplot/" + r[1])
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		if got := hex.EncodeToString(sum[:]); got != r[2] {
			t.Errorf("%s: sha256 %s, README says %s", r[1], got, r[2])
		}
	}
	if _, ok := uiAssets["/ui/vendor/uplot/LICENSE"]; !ok {
		t.Error("uPlot's licence is not served with it")
	}
}
