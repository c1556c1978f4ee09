package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-gw/sluice/config"
)

// consoleLine writes one console-format line through newLogger to w.
func consoleLine(w io.Writer) {
	log := newLogger(&config.Config{Log: config.Log{Level: "info", Format: "console"}}, w)
	log.Info().Str("backend", "logstore").Msg("sluice is up")
}

// TestConsoleLogColourOnlyOnTTY: log.format: console written to a file or
// a pipe carries no ANSI escape codes (a terminal gets colour:
// TestConsoleLogColourOnTerminal).
func TestConsoleLogColourOnlyOnTTY(t *testing.T) {
	var buf bytes.Buffer
	consoleLine(&buf)
	f, err := os.Create(filepath.Join(t.TempDir(), "sluice.log"))
	if err != nil {
		t.Fatal(err)
	}
	consoleLine(f)
	f.Close()
	file, _ := os.ReadFile(f.Name())
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	consoleLine(w)
	w.Close()
	pipe, _ := io.ReadAll(r)
	r.Close()
	for name, out := range map[string]string{"buffer": buf.String(), "file": string(file), "pipe": string(pipe)} {
		if !strings.Contains(out, "sluice is up") || !strings.Contains(out, "backend=logstore") {
			t.Errorf("%s: %q, want the console line", name, out)
		}
		if strings.Contains(out, "\x1b[") {
			t.Errorf("%s: %q carries ANSI escape codes", name, out)
		}
	}
}
