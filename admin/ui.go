package admin

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/sluice-gw/sluice/problem"
)

// ui is the dashboard: index.html at /, everything else at /ui/<path>.
// Every script and style the page loads is here (uPlot is vendored under
// vendor/uplot), so the page works without any other host.
//
//go:embed ui
var ui embed.FS

// asset is one static file of the dashboard.
type asset struct {
	body  []byte
	ctype string
	etag  string
}

// uiAssets are the files under /ui/, by request path; index.html is
// served at / only.
var uiAssets = func() map[string]asset {
	out := map[string]asset{}
	_ = fs.WalkDir(ui, "ui", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || p == "ui/index.html" {
			return err
		}
		body, err := ui.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(body)
		ctype, ok := contentTypes[path.Ext(p)]
		if !ok {
			ctype = "text/plain; charset=utf-8" // LICENSE, README
		}
		out["/"+p] = asset{body: body, ctype: ctype, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
		return nil
	})
	return out
}()

// contentTypes are the types of the dashboard's files, fixed here rather
// than read from the host's mime tables.
var contentTypes = map[string]string{
	".js":  "text/javascript; charset=utf-8",
	".css": "text/css; charset=utf-8",
	".svg": "image/svg+xml",
}

// authPlaceholder in index.html becomes "token" when the admin API needs
// one, so the page asks for it before its first call, else "none".
const authPlaceholder = "__SLUICE_AUTH__"

// csp lets the page load only its own files and call only its own
// origin: no inline script, no other host, no framing.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

func uiHeaders(rw http.ResponseWriter, ctype string) {
	hd := rw.Header()
	hd.Set("Content-Type", ctype)
	hd.Set("Content-Security-Policy", csp)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Referrer-Policy", "no-referrer")
}

// index serves the dashboard's page. It holds no data: what it shows, it
// asks the API for, with the token the operator enters.
func (h *Handler) index(rw http.ResponseWriter, r *http.Request) {
	page, _ := ui.ReadFile("ui/index.html") // embedded: always there
	mode := "none"
	if h.Token != "" {
		mode = "token"
	}
	uiHeaders(rw, "text/html; charset=utf-8")
	rw.Header().Set("Cache-Control", "no-store")
	http.ServeContent(rw, r, "", time.Time{}, bytes.NewReader(bytes.ReplaceAll(page, []byte(authPlaceholder), []byte(mode))))
}

// static serves the dashboard's scripts, styles and icons; there are no
// directory listings.
func (h *Handler) static(rw http.ResponseWriter, r *http.Request) {
	a, ok := uiAssets[r.URL.Path]
	if !ok {
		problem.Write(rw, 404, "no dashboard file at "+r.URL.Path)
		return
	}
	uiHeaders(rw, a.ctype)
	rw.Header().Set("Cache-Control", "no-cache") // revalidated by ETag: a new binary's files are seen at once
	rw.Header().Set("ETag", a.etag)
	http.ServeContent(rw, r, "", time.Time{}, bytes.NewReader(a.body))
}

// public tells the calls served without the admin token: /healthz and the
// dashboard's page and static files, which are the same for everyone and
// carry no data. Every API call stays behind the token. A path that is not
// clean (/ui/../admin/…) is not public, whatever it would resolve to.
func public(r *http.Request) bool {
	p := r.URL.Path
	if p == "/healthz" {
		return true
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	return p == "/" || strings.HasPrefix(p, "/ui/") && path.Clean(p) == p
}

// crossSite tells a browser's call that changes something (replay, PATCH)
// sent by a page of another origin: a page on any site can make the
// operator's browser send a form POST to a loopback admin port. Browsers
// say where a call comes from in Origin (or, at least, Sec-Fetch-Site);
// curl and other programs send neither and are not affected.
func crossSite(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return false
	}
	o := r.Header.Get("Origin")
	if o == "" {
		return r.Header.Get("Sec-Fetch-Site") == "cross-site"
	}
	u, err := url.Parse(o)
	return err != nil || u.Host != r.Host
}
