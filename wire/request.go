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
)

// EncodeRequest encodes r for a request or dead-letter topic.
func EncodeRequest(r *job.Request) broker.Message {
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
	return r, nil
}
