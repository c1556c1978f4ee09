// Package wait is how tests wait: on a condition with a deadline, never on
// a sleep that hopes it was long enough; and, for what must not happen,
// over an explicit window.
package wait

import (
	"testing"
	"time"
)

// For polls cond until it holds, failing t when d passes first.
func For(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Never watches cond for the whole window d and fails t if it ever holds:
// that something does not happen can only be watched for a while, so the
// window is explicit, not a bare sleep before an assertion.
func Never(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			t.Fatalf("%s within %v", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if cond() {
		t.Fatalf("%s within %v", what, d)
	}
}
