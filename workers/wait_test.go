package workers

import (
	"testing"
	"time"
)

// waitFor polls cond until it holds, failing t when d passes first: a wait
// on a condition, never a sleep that hopes it was long enough.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// never watches cond for the whole window d and fails t if it ever holds:
// that something does not happen can only be watched for a while, so the
// window is explicit here, not a bare sleep before an assertion.
func never(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			t.Fatalf("%s within %v", what, d)
		}
		time.Sleep(2 * time.Millisecond)
	}
	if cond() {
		t.Fatalf("%s within %v", what, d)
	}
}
