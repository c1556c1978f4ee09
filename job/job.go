package job

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/sluice-gw/sluice/broker"
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

// Header names of a request message. Other tools reading the topics find the
// client's body as the message value and these as headers.
const (
	HID           = "sluice-id"
	HRoute        = "sluice-route"
	HBackend      = "sluice-backend"
	HClient       = "sluice-client"
	HMethod       = "sluice-method"
	HPath         = "sluice-path"
	HQuery        = "sluice-query"
	HHeaders      = "sluice-headers"
	HAcceptedAt   = "sluice-accepted-at"
	HAttempts     = "sluice-attempts"
	HGen          = "sluice-generation"
	HLastError    = "sluice-last-error"
	HAvoidURL     = "sluice-avoid-url"
	HDeadLettered = "sluice-dead-lettered-at"
)

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
}

// Message encodes r for a topic.
func (r *Request) Message() broker.Message {
	hdr, _ := json.Marshal(r.Header) // [][2]string always encodes
	h := map[string]string{
		HID:         r.ID,
		HRoute:      r.Route,
		HBackend:    r.Backend,
		HMethod:     r.Method,
		HHeaders:    string(hdr),
		HAcceptedAt: r.AcceptedAt.UTC().Format(time.RFC3339Nano),
		HAttempts:   strconv.Itoa(r.Attempts),
		HGen:        strconv.Itoa(r.Gen),
	}
	opt := func(k, v string) {
		if v != "" {
			h[k] = v
		}
	}
	opt(HClient, r.Client)
	opt(HPath, r.Path)
	opt(HQuery, r.Query)
	opt(HLastError, r.LastError)
	if r.AvoidURL > 0 {
		h[HAvoidURL] = strconv.Itoa(r.AvoidURL)
	}
	if !r.DeadAt.IsZero() {
		h[HDeadLettered] = r.DeadAt.UTC().Format(time.RFC3339Nano)
	}
	return broker.Message{Key: r.ID, Headers: h, Body: r.Body}
}

// DecodeRequest reads a request from a topic message.
func DecodeRequest(m broker.Message) (*Request, error) {
	h := m.Headers
	r := &Request{
		ID: h[HID], Route: h[HRoute], Backend: h[HBackend], Client: h[HClient],
		Method: h[HMethod], Path: h[HPath], Query: h[HQuery], Body: m.Body,
		LastError: h[HLastError],
	}
	if r.ID == "" || r.Method == "" {
		return nil, fmt.Errorf("decode request %q: missing %s or %s", m.Key, HID, HMethod)
	}
	if s := h[HHeaders]; s != "" {
		if err := json.Unmarshal([]byte(s), &r.Header); err != nil {
			return nil, fmt.Errorf("decode request %s: %s: %w", r.ID, HHeaders, err)
		}
	}
	var err error
	if r.AcceptedAt, err = time.Parse(time.RFC3339Nano, h[HAcceptedAt]); err != nil {
		return nil, fmt.Errorf("decode request %s: %s: %w", r.ID, HAcceptedAt, err)
	}
	r.Attempts, _ = strconv.Atoi(h[HAttempts])
	r.Gen, _ = strconv.Atoi(h[HGen])
	r.AvoidURL, _ = strconv.Atoi(h[HAvoidURL])
	if s := h[HDeadLettered]; s != "" {
		r.DeadAt, _ = time.Parse(time.RFC3339Nano, s)
	}
	return r, nil
}

// Response is a backend's answer as clients see it when polling.
type Response struct {
	Status       int               `json:"status"`
	Headers      map[string]string `json:"headers"`
	Body         string            `json:"body"`
	BodyEncoding string            `json:"body_encoding"`
	// Truncated reports a body (or headers) cut to the stored size.
	Truncated bool `json:"truncated,omitempty"`
}

// Stored response sizes. A response is kept whole up to MaxStoredBody bytes
// as received (SPEC §6); as stored, JSON-escaped or base64, its body takes
// at most MaxEncodedBody and its headers MaxStoredHeaders, so a status event
// always fits in a broker message (a body of control characters escapes to
// six times its size).
const (
	MaxStoredBody    = 1 << 20
	MaxEncodedBody   = 2 << 20
	MaxStoredHeaders = 64 << 10
)

// staleWhenCut are the headers that describe the whole body: wrong for a
// truncated one. Content-Encoding stays: the bytes kept are still in it (a
// cut gzip stream still inflates up to the cut).
var staleWhenCut = []string{"Content-Length", "Content-Range", "Content-Md5", "Digest", "Content-Digest", "Repr-Digest", "Etag"}

// NewResponse captures a backend answer: header values joined with ", ",
// the body as UTF-8 text, or base64 when it is not valid UTF-8. cut says
// the body was already cut at MaxStoredBody by its reader. A body whose
// stored form would exceed MaxEncodedBody is cut further.
func NewResponse(status int, header http.Header, body []byte, cut bool) *Response {
	r := &Response{Status: status, Headers: make(map[string]string, len(header)), Truncated: cut}
	if len(body) > MaxStoredBody {
		body, r.Truncated = body[:MaxStoredBody], true
	}
	if r.Truncated { // the cut may have split a character
		for i := 0; i < utf8.UTFMax && len(body) > 0 && !utf8.Valid(body); i++ {
			body = body[:len(body)-1]
		}
	}
	if utf8.Valid(body) {
		if n := fitEscaped(body, MaxEncodedBody); n < len(body) {
			body, r.Truncated = body[:n], true
		}
		r.Body, r.BodyEncoding = string(body), "utf8"
	} else {
		r.Body, r.BodyEncoding = base64.StdEncoding.EncodeToString(body), "base64"
	}
	names := make([]string, 0, len(header))
	for k := range header {
		names = append(names, k)
	}
	sort.Strings(names)
	size := 0
	for _, k := range names {
		if r.Truncated && slices.Contains(staleWhenCut, http.CanonicalHeaderKey(k)) {
			continue
		}
		v := strings.Join(header[k], ", ")
		if size += len(k) + len(v); size > MaxStoredHeaders {
			r.Truncated = true
			continue
		}
		r.Headers[k] = v
	}
	if r.Truncated {
		r.dropStale()
	}
	return r
}

// WithoutBody returns a copy of r with its body dropped and marked
// truncated: for an outcome the broker refuses as too large.
func (r *Response) WithoutBody() *Response {
	cp := *r
	cp.Headers = maps.Clone(r.Headers)
	cp.Body, cp.Truncated = "", true
	cp.dropStale()
	return &cp
}

func (r *Response) dropStale() {
	for k := range r.Headers {
		if slices.Contains(staleWhenCut, http.CanonicalHeaderKey(k)) {
			delete(r.Headers, k)
		}
	}
}

// fitEscaped returns how many bytes of the UTF-8 text b fit in limit bytes
// once JSON-escaped (as Marshal escapes), cut at a character boundary.
func fitEscaped(b []byte, limit int) int {
	n := 0
	for i := 0; i < len(b); {
		c, size := utf8.DecodeRune(b[i:])
		w := size
		switch {
		case c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t':
			w = 2
		case c < 0x20 || c == '\u2028' || c == '\u2029':
			w = 6
		}
		if n+w > limit {
			return i
		}
		n += w
		i += size
	}
	return len(b)
}

// BodyBytes returns the body as the backend sent it.
func (r *Response) BodyBytes() []byte {
	if r.BodyEncoding == "base64" {
		b, _ := base64.StdEncoding.DecodeString(r.Body)
		return b
	}
	return []byte(r.Body)
}

// Event is one status change, sent by workers to the result topic. Every
// event carries the request's identity, so any event can create its record.
type Event struct {
	ID           string    `json:"id"`
	Route        string    `json:"route"`
	Backend      string    `json:"backend"`
	Client       string    `json:"client,omitempty"`
	Gen          int       `json:"gen"`
	Status       Status    `json:"status"`
	Attempts     int       `json:"attempts"`
	AcceptedAt   time.Time `json:"accepted_at"`
	At           time.Time `json:"at"`
	LastError    string    `json:"last_error,omitempty"`
	Response     *Response `json:"response,omitempty"`
	DeadLettered bool      `json:"dead_lettered,omitempty"`
}

// Message encodes e for the result topic.
func (e *Event) Message() broker.Message {
	b, _ := Marshal(e) // plain struct always encodes
	return broker.Message{Key: e.ID, Body: b}
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

// DecodeEvent reads an event from a result-topic message.
func DecodeEvent(m broker.Message) (*Event, error) {
	var e Event
	if err := json.Unmarshal(m.Body, &e); err != nil {
		return nil, fmt.Errorf("decode event %q: %w", m.Key, err)
	}
	if e.ID == "" || e.Status == "" {
		return nil, fmt.Errorf("decode event %q: missing id or status", m.Key)
	}
	return &e, nil
}

// EventFor starts an event about r.
func EventFor(r *Request, s Status, attempts int) *Event {
	return &Event{
		ID: r.ID, Route: r.Route, Backend: r.Backend, Client: r.Client, Gen: r.Gen,
		Status: s, Attempts: attempts, AcceptedAt: r.AcceptedAt, At: time.Now().UTC(),
	}
}

// Record is a request's status as clients poll it (SPEC §3).
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
	// Client owns the record; Gen orders replays. Neither is shown to clients.
	Client string `json:"-"`
	Gen    int    `json:"-"`
}

// Apply merges e into r and reports whether r changed. Events may arrive
// late, twice or out of order (delivery is at-least-once): an event older
// than what r already holds is ignored, and the first terminal status of a
// generation is final.
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

// hopByHop are the headers a proxy never forwards (RFC 9110 §7.6.1), plus
// the ones the transport sets itself.
var hopByHop = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true, "Proxy-Authorization": true,
	"Proxy-Connection": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
	"Host": true, "Content-Length": true,
}

// Forwardable reports whether a client header travels to the backend: not
// hop-by-hop, not named by Connection, not the client's credentials.
func Forwardable(name string, connection string) bool {
	c := http.CanonicalHeaderKey(name)
	if hopByHop[c] || c == "Authorization" || c == "X-Api-Key" {
		return false
	}
	for _, f := range strings.Split(connection, ",") {
		if strings.EqualFold(strings.TrimSpace(f), name) {
			return false
		}
	}
	return true
}
