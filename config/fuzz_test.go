package config

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse feeds arbitrary documents to the config parser: it never panics,
// and a config it accepts validates again unchanged.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.yaml")
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err == nil {
			f.Add(string(b))
		}
	}
	f.Add("routes: [{name: a, path: /a/, backend: b}]\nbackends: [{name: b, urls: ['http://x/'], rate: 1e308}]")
	f.Add("&a {x: *a}")
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, doc string) {
		c, err := Parse([]byte(doc), dir)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("accepted config no longer validates: %v", err)
		}
	})
}
