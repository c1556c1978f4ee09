package cluster_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-gw/sluice/cluster"
	"github.com/sluice-gw/sluice/cluster/clustertest"
)

func TestFileConformance(t *testing.T) {
	clustertest.Run(t, func(t *testing.T) (cluster.Store, cluster.Store) {
		f, err := cluster.OpenFile(filepath.Join(t.TempDir(), "results", "tuning.json"))
		if err != nil {
			t.Fatal(err)
		}
		return f, f
	})
}

// TestFileSurvivesReopen: what a Tune wrote is there after the process
// starts again; a Reset is too.
func TestFileSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "tuning.json")
	ctx := context.Background()
	f, err := cluster.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	rate, paused := 7.5, true
	want, err := f.Tune(ctx, "b", cluster.Tuning{Rate: &rate, Paused: &paused})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Tune(ctx, "c", cluster.Tuning{Rate: &rate}); err != nil {
		t.Fatal(err)
	}
	if err := f.Reset(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	g, err := cluster.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got, err := g.Tunings(ctx, []string{"b", "c"})
	if err != nil || len(got) != 1 || !got["b"].Equal(want) {
		t.Fatalf("reopened: %+v %v, want b = %+v", got, err, want)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".tuning-*")); len(left) > 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

// TestFileCorrupt: a tuning file that does not parse stops the start,
// naming the file, instead of silently dropping a pause.
func TestFileCorrupt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tuning.json")
	if err := os.WriteFile(path, []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := cluster.OpenFile(path)
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("corrupt file: %v", err)
	}
}
