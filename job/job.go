package job

import (
	"bytes"
	"encoding/json"
	"errors"
	"time"
)

// ErrNotFound reports an unknown or expired request id.
var ErrNotFound = errors.New("no such request")

// Status is where a request stands.
type Status string

// The statuses of SPEC §3. Succeeded and Failed are terminal.
const (
	Queued    Status = "queued"
	InFlight  Status = "in_flight"
	Retrying  Status = "retrying"
	Succeeded Status = "succeeded"
	Failed    Status = "failed"
)

// Terminal reports whether s is a final status.
func (s Status) Terminal() bool { return s == Succeeded || s == Failed }

// Rank orders the statuses of one attempt the way Record.Apply does:
// queued, in_flight, retrying, then the terminal ones.
func (s Status) Rank() int {
	switch s {
	case InFlight:
		return 1
	case Retrying:
		return 2
	case Succeeded, Failed:
		return 3
	}
	return 0
}

// Request is a client request waiting for delivery.
type Request struct {
	ID      string
	Route   string
	Backend string
	Client  string
	Method  string
	// Path is appended to the backend url's path: the rest of the request
	// path after a prefix route, empty for an exact route.
	Path   string
	Query  string
	Header [][2]string // client headers to forward, in order
	Body   []byte

	AcceptedAt time.Time
	Attempts   int // attempts already made
	Gen        int // replay generation: each replay starts a new one
	LastError  string
	DeadAt     time.Time // when it was dead-lettered
	// AvoidURL is 1 + the index of the backend url the last attempt failed
	// on, so a retry goes elsewhere; 0: none.
	AvoidURL int
	// AttemptLog is the attempts made so far, of every generation: each
	// attempt adds its entry before the request is retried or
	// dead-lettered.
	AttemptLog AttemptLog
}

// Event is one status change, sent by workers to the result topic. Every
// event carries the request's identity, so any event can create its record.
// How it travels is package wire's business.
type Event struct {
	ID           string
	Route        string
	Backend      string
	Client       string
	Gen          int
	Status       Status
	Attempts     int
	AcceptedAt   time.Time
	At           time.Time
	LastError    string
	Response     *Response
	DeadLettered bool
	// AttemptLog is the request's attempt log as it stands with this
	// event: an outcome's event includes its own attempt.
	AttemptLog AttemptLog
}

// Marshal is json.Marshal without HTML escaping: a backend's "<" stays one
// byte instead of the six of "\u003c", so stored and relayed bodies keep
// their size.
func Marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// EventFor starts an event about r.
func EventFor(r *Request, s Status, attempts int) *Event {
	return &Event{
		ID: r.ID, Route: r.Route, Backend: r.Backend, Client: r.Client, Gen: r.Gen,
		Status: s, Attempts: attempts, AcceptedAt: r.AcceptedAt, At: time.Now().UTC(),
		AttemptLog: r.AttemptLog,
	}
}

// Record is a request's status as clients poll it (SPEC §3): its JSON form
// is what a poll answers, and what the result stores keep (results embeds
// a Record).
type Record struct {
	ID           string     `json:"id"`
	Route        string     `json:"route"`
	Backend      string     `json:"backend"`
	Status       Status     `json:"status"`
	Attempts     int        `json:"attempts"`
	AcceptedAt   time.Time  `json:"accepted_at"`
	UpdatedAt    time.Time  `json:"updated_at"`
	CompletedAt  *time.Time `json:"completed_at,omitempty"`
	LastError    string     `json:"last_error,omitempty"`
	Response     *Response  `json:"response,omitempty"`
	DeadLettered bool       `json:"dead_lettered"`
	AttemptLog   AttemptLog `json:"attempt_log"`
	// Client owns the record; Gen orders replays. Neither is shown to
	// clients; the stores keep them beside the record.
	Client string `json:"-"`
	Gen    int    `json:"-"`
}

// Apply merges e into r and reports whether r changed. Events may arrive
// late, twice or out of order (delivery is at-least-once): an event older
// than what r already holds is ignored, and the first terminal status of a
// generation is final.
//
// The event that wins replaces the whole record, its attempt log
// included: a later event's log holds every attempt an earlier one's does
// (the log travels with the request, see AttemptLog), so the record is
// always the projection of the last event it took — which is what lets
// the Redis store merge by comparing keys alone.
func (r *Record) Apply(e *Event) bool {
	if r.ID != "" {
		if r.Gen == e.Gen && r.Status.Terminal() {
			return false
		}
		if e.Gen < r.Gen || (e.Gen == r.Gen && (e.Attempts < r.Attempts ||
			(e.Attempts == r.Attempts && e.Status.Rank() <= r.Status.Rank()))) {
			return false
		}
	}
	*r = Record{
		ID: e.ID, Route: e.Route, Backend: e.Backend, Client: e.Client, Gen: e.Gen,
		Status: e.Status, Attempts: e.Attempts, AcceptedAt: e.AcceptedAt, UpdatedAt: e.At,
		LastError: e.LastError, Response: e.Response, DeadLettered: e.DeadLettered,
		AttemptLog: e.AttemptLog,
	}
	if e.Status.Terminal() {
		at := e.At
		r.CompletedAt = &at
	}
	return true
}

// ClaimState is where an idempotency key stands for a submit that claims
// it (see results.Store.Claim).
type ClaimState int

const (
	// ClaimOwned: the caller holds the key until its lease runs out. It
	// publishes Claim.ID (a fresh id, or an earlier request's id whose write
	// failed or whose outcome is unknown) and then releases the claim.
	ClaimOwned ClaimState = iota + 1
	// ClaimQueued: Claim.ID was queued; the caller answers with it.
	ClaimQueued
	// ClaimPending: another submit holds the key and is writing Claim.ID
	// right now; the caller waits a little and claims again, or answers 409.
	ClaimPending
)

// Claim is an idempotency key's binding.
type Claim struct {
	ID    string
	State ClaimState
}

// Keep says which outcomes keep the backend's response (status, headers,
// body) in the store (config results.keep_response). An outcome without
// it polls with no "response" field, and GET /v1/requests/<id>/response
// answers 410.
type Keep int

const (
	// KeepAlways keeps every response.
	KeepAlways Keep = iota
	// KeepFailures keeps the responses of failed (and dead-lettered)
	// outcomes only: a succeeded request is stored without its response.
	KeepFailures
	// KeepNever keeps no response.
	KeepNever
)

// ParseKeep reads results.keep_response: "failures", "never", or anything
// else (validated by config) for "always".
func ParseKeep(v string) Keep {
	switch v {
	case "failures":
		return KeepFailures
	case "never":
		return KeepNever
	}
	return KeepAlways
}

// Keeps reports whether the response of an outcome with status st is
// stored.
func (k Keep) Keeps(st Status) bool {
	switch k {
	case KeepNever:
		return false
	case KeepFailures:
		return st == Failed
	}
	return true
}
