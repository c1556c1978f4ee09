package workers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Verdict is what one attempt's outcome means.
type Verdict int

// The verdicts of Classify.
const (
	Success  Verdict = iota // 2xx: done
	Retry                   // configured status, network error or timeout
	Terminal                // any other status: done, failed, response kept
)

// Classify decides an attempt's verdict from its status (0 when err is set).
func Classify(status int, err error, onStatus []int) Verdict {
	switch {
	case err != nil:
		return Retry
	case status >= 200 && status < 300:
		return Success
	case slices.Contains(onStatus, status):
		return Retry
	default:
		return Terminal
	}
}

// describe turns a transport error into a short text for clients, without
// the backend's address.
func describe(err error, timeout time.Duration) string {
	var op *net.OpError
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, http.ErrHandlerTimeout):
		return fmt.Sprintf("timeout after %s", timeout)
	case errors.As(err, &op) && op.Err != nil:
		return "network error: " + op.Err.Error()
	case errors.Is(err, net.ErrClosed), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "network error: connection closed"
	default:
		s := err.Error()
		if i := strings.LastIndex(s, ": "); i >= 0 {
			s = s[i+2:]
		}
		return "network error: " + s
	}
}

// retryAfter reads a Retry-After header: seconds or an HTTP date.
func retryAfter(h http.Header, now time.Time) time.Duration {
	v := h.Get("Retry-After")
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && s > 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
