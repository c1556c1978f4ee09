package main

import (
	"flag"
	"os"
	"testing"
)

// TestMain runs up to 4 tests marked parallel at once, unless -parallel
// says otherwise: they mostly wait on gateways, brokers and backends, not
// on the CPU, so GOMAXPROCS (the default) leaves a small machine idle.
func TestMain(m *testing.M) {
	flag.Parse()
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		_ = flag.Set("test.parallel", "4")
	}
	os.Exit(m.Run())
}
