package ingress

import "testing"

func TestForwardable(t *testing.T) {
	t.Parallel()
	for name, want := range map[string]bool{
		"Content-Type": true, "traceparent": true, "Authorization": false, "x-api-key": false,
		"Connection": false, "Transfer-Encoding": false, "X-Drop-Me": false, "Host": false,
	} {
		if got := forwardable(name, "close, X-Drop-Me"); got != want {
			t.Errorf("forwardable(%q) = %v, want %v", name, got, want)
		}
	}
}
