// Package stacks lets tests see which goroutines run which code, to check
// that a component's Close stops every goroutine it started: a leak check
// narrowed to one package, where a process-wide one (goleak) would also
// count the pools of the clients and test servers around it.
package stacks

import (
	"runtime"
	"strings"
	"time"
)

// Matching returns the stack of every goroutine for which keep is true.
func Matching(keep func(stack string) bool) []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if keep(g) {
			out = append(out, g)
		}
	}
	return out
}

// Running returns the stacks that run code of pkg (an import path such as
// "sluice/broker/kafka"), leaving out the package's tests.
func Running(pkg string) []string {
	return Matching(func(g string) bool {
		return strings.Contains(g, pkg+".") && !strings.Contains(g, "_test.go") && !strings.Contains(g, pkg+".Test")
	})
}

// Left polls list until it returns no stack or d has passed, and returns
// what list returned last: none when every goroutine it looks for ended in
// time, else their stacks, for the test to fail with. A goroutine that just
// signalled it is done may still be on its way out; one that is blocked
// stays.
func Left(d time.Duration, list func() []string) []string {
	deadline := time.Now().Add(d)
	for {
		left := list()
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(10 * time.Millisecond)
	}
}
