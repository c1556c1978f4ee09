package job

import (
	"slices"
	"time"
)

// Attempt is one delivery attempt as the attempt log keeps it: when it was
// sent, what came back and how long it took. Its JSON form is an entry of
// a poll's attempt_log (SPEC §6).
type Attempt struct {
	// Attempt is the attempt's number within its generation, 1-based: the
	// X-Sluice-Attempt the backend saw.
	Attempt int `json:"attempt"`
	// At is when the attempt was sent.
	At time.Time `json:"at"`
	// Status is the backend's status, 0 when it gave none (a network
	// error, a timeout, a request that could not be built).
	Status int `json:"status"`
	// Error is the category of a network error (timeout, connection
	// refused, dns, …), never a host or an address; "" with a status.
	Error string `json:"error"`
	// DurationMS is how long the attempt took, in whole milliseconds: from
	// sending the request to the end of the response body.
	DurationMS int64 `json:"duration_ms"`
	// Gen is the replay generation the attempt belongs to (Request.Gen):
	// 0 for the first delivery, n for the n-th dead-letter replay, whose
	// attempts count from 1 again. Shown as "replay", left out when 0.
	Gen int `json:"replay,omitempty"`
}

// The error categories of an attempt that got no answer (Attempt.Error,
// and an event's LastError), as workers report them. They never carry a
// backend's host, address or resolver (SPEC §6).
const (
	ErrTimeout   = "timeout"
	ErrRefused   = "connection refused"
	ErrDNS       = "dns"
	ErrTLS       = "tls"
	ErrReset     = "reset"
	ErrClosed    = "connection closed"
	ErrNetwork   = "network error"
	ErrRequest   = "invalid request"
	ErrUnreached = "unreachable"
)

// ErrorCategories lists every error category. Stored records keep an
// attempt's category as its index here (results/internal/record): append,
// never reorder.
var ErrorCategories = []string{
	ErrTimeout, ErrRefused, ErrDNS, ErrTLS, ErrReset,
	ErrClosed, ErrNetwork, ErrRequest, ErrUnreached,
}

// The bound of an attempt log: it keeps the first AttemptLogFirst
// attempts (how the request started failing) and the latest ones, at most
// MaxAttemptLog in all; the attempts in between are dropped, which their
// numbers show.
const (
	MaxAttemptLog   = 100
	AttemptLogFirst = 10
)

// AttemptLog is a request's attempts, oldest first (by generation, then
// attempt number), each (generation, attempt) once, at most MaxAttemptLog.
//
// The log travels with the request: each attempt adds its entry to the
// request before it is retried or dead-lettered, and every event carries
// the log as it stands, so the record a poll reads keeps the log of the
// event it took last (Record.Apply) — no store merges logs. A dead-letter
// replay keeps the log: its attempts follow the earlier generations'.
//
// A log is never changed in place (With makes a new one), so requests,
// events and records may share one.
type AttemptLog []Attempt

// With returns the log with a added: in its place by generation and
// attempt number, replacing an entry with the same ones (an attempt made
// again after a crash or a redelivery counts once, as its latest try),
// and past MaxAttemptLog, dropping the oldest entry after the first
// AttemptLogFirst. l is left as it is.
func (l AttemptLog) With(a Attempt) AttemptLog {
	i, found := slices.BinarySearchFunc(l, a, compareAttempts)
	out := make(AttemptLog, 0, min(len(l)+1, MaxAttemptLog+1))
	out = append(out, l[:i]...)
	out = append(out, a)
	if found {
		i++
	}
	out = append(out, l[i:]...)
	if len(out) > MaxAttemptLog {
		out = slices.Delete(out, AttemptLogFirst, len(out)-MaxAttemptLog+AttemptLogFirst)
	}
	return out
}

func compareAttempts(a, b Attempt) int {
	if a.Gen != b.Gen {
		return a.Gen - b.Gen
	}
	return a.Attempt - b.Attempt
}

// MarshalJSON writes an empty log as [], never null: a poll always has
// an attempt_log to iterate.
func (l AttemptLog) MarshalJSON() ([]byte, error) {
	if len(l) == 0 {
		return []byte("[]"), nil
	}
	return Marshal([]Attempt(l))
}
