package ingress

import (
	"testing"
	"time"
)

// waitFor polls cond until it holds, failing after 5 s: a wait on a
// condition, never a sleep that hopes it was long enough.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
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
