package gateway

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/sluice-gw/sluice/"

// imports lists the imports of the non-test Go files of the package in dir
// (relative to the module root).
func imports(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("..", dir, "*.go"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no Go files in %s: %v", dir, err)
	}
	var out []string
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if !slices.Contains(out, p) {
				out = append(out, p)
			}
		}
	}
	return out
}

// packages lists every package directory of the module under root.
func packages(t *testing.T) []string {
	t.Helper()
	var dirs []string
	err := filepath.WalkDir("..", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") && path != ".." || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go") {
			dir, _ := filepath.Rel("..", filepath.Dir(path))
			if !slices.Contains(dirs, dir) {
				dirs = append(dirs, dir)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return dirs
}

// TestDependencyRule holds the layout the README describes: arrows point
// to the core, and only the lifecycle knows the concrete adapters.
func TestDependencyRule(t *testing.T) {
	adapters := []string{"broker/embedded", "broker/kafka", "broker/rabbitmq", "results/bolt", "results/redis", "cluster/redis"}
	wiring := []string{"gateway", "cmd/sluice", "bench"} // may know adapters
	siblings := []string{"ingress", "workers", "results", "admin", "metrics"}
	dirs := packages(t)
	for _, want := range append(append([]string{"job", "broker", "wire", "cluster"}, siblings...), adapters...) {
		if !slices.Contains(dirs, want) {
			t.Fatalf("package %s not found among %v", want, dirs)
		}
	}
	for _, dir := range dirs {
		for _, imp := range imports(t, dir) {
			own, ours := strings.CutPrefix(imp, module)
			switch {
			case dir == "job" && (ours || imp == "net/http"):
				t.Errorf("job imports %s: the core imports nothing of ours and no net/http", imp)
			case dir == "broker" && ours:
				t.Errorf("broker (the port) imports %s", imp)
			case dir == "results" && (strings.Contains(imp, "redis") || strings.Contains(imp, "bbolt")):
				t.Errorf("results (the port) imports %s", imp)
			case dir == "cluster" && (ours || strings.Contains(imp, "redis")):
				t.Errorf("cluster (the port) imports %s: the gateway joins it to the workers", imp)
			case ours && slices.Contains(adapters, own) && !slices.Contains(wiring, dir) && !strings.HasPrefix(dir, own):
				t.Errorf("%s imports the adapter %s: only %v wire adapters", dir, own, wiring)
			case strings.HasPrefix(imp, "go.opentelemetry.io/") && top(dir) != "tracing":
				t.Errorf("%s imports %s: OpenTelemetry stays inside tracing (ingress and workers call their own Tracer)", dir, imp)
			case ours && slices.Contains(siblings, top(dir)) && slices.Contains(siblings, top(own)) &&
				top(dir) != top(own) && !((dir == "admin" || dir == "metrics") && own == "workers"):
				t.Errorf("%s imports %s: ingress, workers, results, admin and metrics do not import one another", dir, own)
			}
		}
	}
}

func top(dir string) string { first, _, _ := strings.Cut(dir, "/"); return first }
