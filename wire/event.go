package wire

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/sluice-gw/sluice/broker"
	"github.com/sluice-gw/sluice/job"
)

// event is a job.Event as it travels: the order of the fields is the order
// of the JSON object.
type event struct {
	ID           string        `json:"id"`
	Route        string        `json:"route"`
	Backend      string        `json:"backend"`
	Client       string        `json:"client,omitempty"`
	Gen          int           `json:"gen"`
	Status       string        `json:"status"`
	Attempts     int           `json:"attempts"`
	AcceptedAt   time.Time     `json:"accepted_at"`
	At           time.Time     `json:"at"`
	LastError    string        `json:"last_error,omitempty"`
	Response     *job.Response `json:"response,omitempty"` // its own JSON form, as in a record
	DeadLettered bool          `json:"dead_lettered,omitempty"`
	AttemptLog   []job.Attempt `json:"attempt_log,omitempty"` // the poll's shape; plain, so encoded once (no MarshalJSON pass)
}

// EncodeEvent encodes e for the result topic.
func EncodeEvent(e *job.Event) broker.Message {
	w := event{
		ID: e.ID, Route: e.Route, Backend: e.Backend, Client: e.Client, Gen: e.Gen,
		Status: string(e.Status), Attempts: e.Attempts, AcceptedAt: e.AcceptedAt, At: e.At,
		LastError: e.LastError, Response: e.Response, DeadLettered: e.DeadLettered,
		AttemptLog: e.AttemptLog,
	}
	b, _ := job.Marshal(w) // plain struct always encodes
	return broker.Message{Key: e.ID, Body: b}
}

// DecodeEvent reads an event from a result-topic message.
func DecodeEvent(m broker.Message) (*job.Event, error) {
	var w event
	if err := json.Unmarshal(m.Body, &w); err != nil {
		return nil, fmt.Errorf("decode event %q: %w", m.Key, err)
	}
	if w.ID == "" || w.Status == "" {
		return nil, fmt.Errorf("decode event %q: missing id or status", m.Key)
	}
	e := &job.Event{
		ID: w.ID, Route: w.Route, Backend: w.Backend, Client: w.Client, Gen: w.Gen,
		Status: job.Status(w.Status), Attempts: w.Attempts, AcceptedAt: w.AcceptedAt, At: w.At,
		LastError: w.LastError, Response: w.Response, DeadLettered: w.DeadLettered,
		AttemptLog: job.AttemptLog(w.AttemptLog),
	}
	return e, nil
}
