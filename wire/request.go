package wire

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/job"
)

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
	// HAttemptLog is the request's attempt log so far (job.AttemptLog), a
	// JSON array of the entries as a poll shows them; left out when empty.
	HAttemptLog = "sluice-attempt-log"
)

// EncodeRequest encodes r for a request or dead-letter topic.
func EncodeRequest(r *job.Request) broker.Message {
	n := 8 // the headers every request has, then the optional ones
	for _, v := range [...]string{r.Client, r.Path, r.Query, r.LastError} {
		if v != "" {
			n++
		}
	}
	if r.AvoidURL > 0 {
		n++
	}
	if !r.DeadAt.IsZero() {
		n++
	}
	if len(r.AttemptLog) > 0 {
		n++
	}
	h := make(map[string]string, n)
	h[HID] = r.ID
	h[HRoute] = r.Route
	h[HBackend] = r.Backend
	h[HMethod] = r.Method
	h[HHeaders] = headersJSON(r.Header)
	h[HAcceptedAt] = r.AcceptedAt.UTC().Format(time.RFC3339Nano)
	h[HAttempts] = strconv.Itoa(r.Attempts)
	h[HGen] = strconv.Itoa(r.Gen)
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
	if len(r.AttemptLog) > 0 {
		// As plain entries: through AttemptLog's MarshalJSON, encoding/json
		// would scan and compact the encoded log a second time.
		b, _ := job.Marshal([]job.Attempt(r.AttemptLog)) // plain values always encode
		h[HAttemptLog] = string(b)
	}
	return broker.Message{Key: r.ID, Headers: h, Body: r.Body}
}

// headersJSON is json.Marshal(h), byte for byte. Header names and values
// are almost always printable ASCII that JSON keeps as is; those are
// written directly, anything else goes through encoding/json.
func headersJSON(h [][2]string) string {
	if h == nil {
		return "null"
	}
	size := 2
	for _, kv := range h {
		if !plainJSON(kv[0]) || !plainJSON(kv[1]) {
			b, _ := json.Marshal(h) // [][2]string always encodes
			return string(b)
		}
		size += len(kv[0]) + len(kv[1]) + 8
	}
	b := make([]byte, 0, size)
	b = append(b, '[')
	for i, kv := range h {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `["`...)
		b = append(b, kv[0]...)
		b = append(b, `","`...)
		b = append(b, kv[1]...)
		b = append(b, `"]`...)
	}
	b = append(b, ']')
	return string(b)
}

// plainJSON reports whether encoding/json writes s as it is between
// quotes: printable ASCII without the characters it escapes (the quote,
// the backslash, and <, >, & which it escapes for HTML).
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20 || c > 0x7e, c == '"', c == '\\', c == '<', c == '>', c == '&':
			return false
		}
	}
	return true
}

// DecodeRequest reads a request from a request or dead-letter topic
// message.
func DecodeRequest(m broker.Message) (*job.Request, error) {
	h := m.Headers
	r := &job.Request{
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
	if s := h[HAttemptLog]; s != "" {
		// The log only informs: one that cannot be read is dropped, and
		// the request is delivered all the same.
		if json.Unmarshal([]byte(s), &r.AttemptLog) != nil {
			r.AttemptLog = nil
		}
	}
	return r, nil
}
