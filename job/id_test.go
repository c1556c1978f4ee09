package job

import (
	"testing"
	"time"
)

func TestID(t *testing.T) {
	at := time.UnixMilli(1_700_000_000_123)
	a, b := NewIDAt(at), NewIDAt(at)
	if a == b || len(a) != 24 {
		t.Fatalf("ids %q %q: want distinct, 24 characters", a, b)
	}
	if got, ok := IssuedAt(a); !ok || !got.Equal(at) {
		t.Fatalf("IssuedAt(%q) = %v %v, want %v", a, got, ok, at)
	}
	if _, ok := IssuedAt("not an id"); ok {
		t.Fatal("a foreign id read as issued")
	}
}
